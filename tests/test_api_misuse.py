"""Misuse of the Python API (issue 15): wrong types, out-of-range values, None, empty prompts, calls in the
wrong order, states of other sessions, two generations on one session. Each case must end in a typed error
of asa_runtime.errors with a one-line message, or in a correct result; never a raw TypeError /
AttributeError / KeyError / OverflowError from deep inside, never a silently wrong answer."""
from __future__ import annotations

import pytest
import torch

from asa_runtime.chat import Chat, Conversation
from asa_runtime.errors import (BackendError, CacheFull, CheckpointError, GenerationError, PromptCacheError,
                                RegistryError)
from asa_runtime.generate import Session, from_model, generate, load, stream_generate
from asa_runtime.prompt_cache import load_prompt_cache, save_prompt_cache
from asa_runtime.sampling import Sampler, SamplerConfig

TYPED = (RegistryError, CheckpointError, BackendError, GenerationError, CacheFull)
P = "The old man looked at the children"


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def refused(fn, types=GenerationError, match: str | None = None) -> str:
    """fn() (a generator is run to the end) raises one of `types` with a one-line message."""
    with pytest.raises(types) as ei:
        r = fn()
        if hasattr(r, "__next__"):
            list(r)
    msg = one_line(ei)
    if match:
        assert match in msg, msg
    return msg


@pytest.fixture(scope="module")
def lm(tiny_checkpoint):
    return load(tiny_checkpoint)


@pytest.fixture(scope="module")
def lm_dense(tiny_dense_checkpoint):
    return load(tiny_dense_checkpoint)


def greedy(lm, prompt, n=6, **kw):
    return [r.token for r in stream_generate(lm, prompt, n, temp=0, stop_at_eos=False, **kw)]


# ---- load / from_model ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, types, match", [
    (dict(name_or_path=None), RegistryError, "unknown model"),
    (dict(name_or_path=""), RegistryError, "empty model name"),
    (dict(name_or_path=123), RegistryError, "unknown model"),
    (dict(device=None), GenerationError, "unknown device"),
    (dict(device="tpu"), GenerationError, "unknown device"),
    (dict(dtype=123), GenerationError, "unknown dtype"),
    (dict(dtype="float64"), GenerationError, "unknown dtype"),
    (dict(kv_dtype="int8"), GenerationError, "unknown dtype"),
    (dict(quantize="int4"), GenerationError, "unknown quantization"),
    (dict(quantize=True), GenerationError, "unknown quantization"),
    (dict(backend="foo"), BackendError, "unknown backend"),
    (dict(backend=None), BackendError, "unknown backend"),
    (dict(mode="bogus"), GenerationError, "unknown ASA mode"),
    (dict(mode=1), GenerationError, "unknown ASA mode"),
    (dict(planner="full"), GenerationError, "planner must be a Planner"),
])
def test_load_refuses_bad_arguments(tiny_checkpoint, kw, types, match):
    kw = {"name_or_path": tiny_checkpoint, **kw}
    refused(lambda: load(**kw), types, match)


def test_load_missing_folder_is_a_registry_error(tmp_path):
    refused(lambda: load(tmp_path / "nope"), RegistryError)
    refused(lambda: load(tmp_path), RegistryError, "config.json is missing")


def test_from_model_refuses_what_is_not_a_model_or_tokenizer(lm):
    refused(lambda: from_model(None, lm.tokenizer), match="Transformer")
    refused(lambda: from_model(torch.nn.Linear(2, 2), lm.tokenizer), match="Transformer")
    refused(lambda: from_model(lm.model, None), match="Tokenizer")
    refused(lambda: from_model(lm.model, "tokenizer.json"), match="Tokenizer")
    refused(lambda: from_model(lm.model, lm.tokenizer, planner=object()), match="planner")
    refused(lambda: from_model(lm.model, lm.tokenizer, device="gpu"), match="unknown device")
    assert greedy(from_model(lm.model, lm.tokenizer, planner=lm.planner), P) == greedy(lm, P)


# ---- generate / stream_generate -------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, match", [
    (None, "prompt must be text"),
    (5, "prompt must be text"),
    (b"The old man", "prompt is bytes"),             # was: the bytes' values taken as token ids
    (bytearray(b"ab"), "prompt is bytes"),
    ([1.5, 2.0], "prompt must be text"),             # was: truncated to ids 1, 2
    ([[1, 2]], "prompt must be text"),
    (["a", "b"], "prompt must be text"),
    ([2**70], "token ids must be integers"),          # was: OverflowError
    ([-1], "token ids must be integers"),
    ([10**6], "token ids must be integers"),
    ("", "empty prompt"),
    ([], "empty prompt"),
    ("a\ud800b", "not valid Unicode"),
])
def test_bad_prompts(lm, prompt, match):
    refused(lambda: generate(lm, prompt, 4), match=match)


def test_token_id_prompts_of_any_integer_type(lm):
    ids = lm.tokenizer.encode(P)
    want = greedy(lm, ids)
    assert greedy(lm, P) == want
    assert greedy(lm, torch.tensor(ids)) == want
    import numpy as np

    assert greedy(lm, np.array(ids, dtype=np.int32)) == want
    assert greedy(lm, tuple(ids)) == want


@pytest.mark.parametrize("kw, match", [
    (dict(max_tokens="3"), "max_tokens must be an integer"),
    (dict(max_tokens=None), "max_tokens must be an integer"),
    (dict(max_tokens=1.5), "max_tokens must be an integer"),
    (dict(max_tokens=-1), "max_tokens must be >= 0"),
    (dict(temperature=0.5), "unknown sampling option 'temperature'"),   # was: TypeError
    (dict(temp="0.5"), "temp must be a finite number"),
    (dict(temp=float("nan")), "temp must be a finite number"),
    (dict(temp=-1), "temp must be >= 0"),
    (dict(top_p=0), "top_p"),
    (dict(top_k=1.5), "top_k must be an integer"),
    (dict(seed=2**70), "seed must be an integer in"),                   # was: 'Overflow when unpacking long'
    (dict(seed="1"), "seed must be an integer"),
    (dict(sampler="greedy"), "sampler must be a Sampler"),
    (dict(sampler=Sampler(temp=0), temp=1.0), "and a sampler given"),   # was: temp silently ignored
    (dict(stop=[1]), "stop must be a string or a list of strings"),
    (dict(stop=[None]), "stop must be a string or a list of strings"),
    (dict(stop=5), "stop must be a string or a list of strings"),
    (dict(ctx_size="64"), "ctx_size must be an integer"),
    (dict(ctx_size=-5), "ctx_size must be >= 2"),
    (dict(ctx_size=1), "ctx_size must be >= 2"),
    (dict(ctx_size=10**12), "GiB"),                                    # refused before allocation
    (dict(ctx_size=4), "the context holds 4"),
    (dict(max_kv_size=-1), "max_kv_size must be >= 1"),
    (dict(max_kv_size="8"), "max_kv_size must be an integer"),
    (dict(prefill_chunk=0), "prefill chunk must be >= 1"),
    (dict(prefill_chunk=2.5), "prefill_chunk must be an integer"),
    (dict(session="s"), "session must be a Session"),
    (dict(on_prompt=5), "on_prompt must be callable"),
])
def test_bad_generation_options(lm, kw, match):
    kw = {"max_tokens": 4, **kw}
    refused(lambda: generate(lm, P, **kw), match=match)


def test_cache_too_small_for_the_plan_is_cache_full(lm):
    refused(lambda: generate(lm, P, 4, max_kv_size=1), CacheFull, "too small")


def test_lenient_values_that_have_a_meaning(lm):
    assert generate(lm, P, 0) == ""                                      # prompt statistics only
    assert greedy(lm, P, ctx_size=0) == greedy(lm, P)                    # 0 = the model's context
    assert greedy(lm, P, prefill_chunk=None) == greedy(lm, P)            # None = the default chunk
    assert Session(lm, prefill_chunk=None).prefill_chunk == Session(lm).prefill_chunk
    assert Session(lm, max_kv_size=0).slots.n_slots == Session(lm).slots.n_slots   # 0 = no bound
    assert greedy(lm, P, stop=None) == greedy(lm, P)
    assert generate(lm, P, 8, temp=0, seed=-1) == generate(lm, P, 8, temp=0)
    assert isinstance(generate(lm, P, 3, top_k=10**30, seed=1), str)     # a k above the vocab keeps all


def test_a_stop_string_is_one_stop_not_its_characters(lm):
    full = generate(lm, P, 24, temp=0, stop_at_eos=False)
    word = full.strip().split()[-1] if full.strip() else ""
    if len(word) < 2:
        pytest.skip("the tiny model's greedy text has no word of two characters")
    cut = generate(lm, P, 24, temp=0, stop_at_eos=False, stop=word)
    assert cut == generate(lm, P, 24, temp=0, stop_at_eos=False, stop=[word])
    assert cut == full[: full.index(word)]


def test_not_a_loaded_model(lm):
    for bad in (None, "asa-small", lm.model):
        refused(lambda: generate(bad, P, 2), match="expected a LoadedModel")
        refused(lambda: Session(bad), match="Session needs a LoadedModel")


def test_a_session_of_another_model_is_refused(lm, lm_dense):
    other = Session(lm_dense)
    refused(lambda: generate(lm, P, 2, session=other), match="Session of this LoadedModel")
    assert other.n_past == 0


# ---- Session: wrong order, wrong ids, foreign states ----------------------------------------------------------
@pytest.mark.parametrize("ids, match", [
    ("hello", "flat sequence of token ids"),         # was: ValueError from numpy
    (5, "flat sequence of token ids"),               # was: TypeError len() of unsized object
    (None, "flat sequence of token ids"),
    ([[1, 2]], "flat sequence of token ids"),        # was: TypeError deep in the planner
    ([1.7, 2.2], "must be integers"),                # was: truncated silently
    ([2**70], "must be integers"),                   # was: OverflowError
    ([True, False], "must be integers"),
    ([], "nothing to feed"),
])
def test_feed_refuses_what_is_not_token_ids(lm, ids, match):
    s = Session(lm)
    refused(lambda: s.feed(ids), match=match)
    assert s.n_past == 0


@pytest.mark.parametrize("token, match", [
    ("3", "token must be an integer id"), (3.0, "token must be an integer id"),
    (None, "token must be an integer id"), (-1, "outside the tokenizer"), (10**9, "outside the tokenizer"),
])
def test_step_refuses_what_is_not_a_token_id(lm, token, match):
    s = Session(lm)
    s.feed([1, 2, 3])
    refused(lambda: s.step(token), match=match)
    assert s.n_past == 3                              # the sequence is kept


def test_step_before_feed_is_a_one_token_prefill(lm, lm_dense):
    for m in (lm, lm_dense):
        a, b = Session(m), Session(m)
        assert torch.equal(a.step(5), b.feed([5]))
        assert torch.equal(a.step(7), b.step(7))
        assert torch.equal(a.step(torch.tensor(9)), b.step(9))      # 0-d integer tensors are ids


def test_step_on_a_full_context_is_cache_full_and_keeps_the_sequence(lm):
    s = Session(lm, ctx_size=8)
    logits = s.feed(list(range(1, 9)))
    refused(lambda: s.step(3), CacheFull, "context full")
    assert s.n_past == 8 and torch.equal(s.last_logits, logits)   # was: the whole sequence was dropped
    refused(lambda: s.feed([3]), GenerationError, "do not fit")


def test_state_of_an_empty_session(lm):
    refused(lambda: Session(lm).state(), match="nothing to save")


@pytest.mark.parametrize("state", [None, {}, "p.cache", {"tensors": {}}, {"tensors": [], "meta": {}},
                                   {"tensors": {}, "meta": {}}])
def test_restore_of_what_is_not_a_state(lm, state):
    s = Session(lm)
    s.feed([1, 2, 3])
    refused(lambda: s.restore(state))
    assert s.n_past == 0                              # documented: a refused state leaves the session empty


def test_restore_of_a_foreign_state(lm, lm_dense, tiny_tokenizer, tmp_path):
    ids = lm.tokenizer.encode(P)
    dense = Session(lm_dense)
    dense.feed(ids)
    refused(lambda: Session(lm).restore(dense.state()), match="inconsistent session state")
    sparse = Session(lm)
    sparse.feed(ids)
    refused(lambda: Session(lm_dense).restore(sparse.state()), match="inconsistent session state")
    refused(lambda: Session(lm, ctx_size=len(ids)).restore(sparse.state()), match="does not fit")
    # another architecture (more layers): the cache rows do not fit
    big = load(_other_arch_checkpoint(tmp_path, tiny_tokenizer))
    refused(lambda: Session(big).restore(sparse.state()), match="does not match")
    # the same state restores into a fresh session of the same model and goes on identically
    t = Session(lm)
    assert t.restore(sparse.state()) == len(ids)
    assert torch.equal(t.step(5), sparse.step(5))


def _other_arch_checkpoint(tmp_path, tok):
    from asa_runtime.checkpoint import save_checkpoint
    from asa_runtime.config import PRESETS, ModelConfig, PlanConfig
    from asa_runtime.model import Transformer
    from conftest import TEST_PLAN

    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": tok.vocab_size, "n_layer": PRESETS["test"]["n_layer"] + 1,
                         "plan": PlanConfig(mode="full", **TEST_PLAN)})
    return save_checkpoint(tmp_path / "other", Transformer(cfg), tok, card="# other\n")


def test_two_generations_on_one_session_fail_loudly(lm):
    s = Session(lm)
    g1 = stream_generate(lm, P, 6, temp=0, session=s, stop_at_eos=False)
    next(g1)
    g2 = stream_generate(lm, "When the storm came", 6, temp=0, session=s, stop_at_eos=False)
    next(g2)
    refused(lambda: g1, match="one generation at a time per Session")      # was: went on from g2's tokens
    rest = [r.token for r in g2]                                             # the newer one is unharmed
    assert len(rest) == 5
    s.feed([3])
    g3 = stream_generate(lm, P, 6, temp=0, session=s)
    next(g3)
    s.reset()
    refused(lambda: g3, match="one generation at a time")


def test_two_live_sessions_on_one_model_are_independent(lm, lm_dense):
    for m in (lm, lm_dense):
        solo_a, solo_b = greedy(m, P, 8), greedy(m, "When the storm came in October", 8)
        ga = stream_generate(m, P, 8, temp=0, stop_at_eos=False)
        gb = stream_generate(m, "When the storm came in October", 8, temp=0, stop_at_eos=False)
        a, b = [], []
        for ra, rb in zip(ga, gb):
            a.append(ra.token)
            b.append(rb.token)
        assert (a, b) == (solo_a, solo_b)


def test_a_session_goes_on_after_its_generation_finished(lm):
    s = Session(lm, ctx_size=24)
    ids = lm.tokenizer.encode(P)
    out = list(stream_generate(lm, ids, 100, temp=0, session=s, stop_at_eos=False))
    assert out[-1].finish_reason == "length" and s.room == 0               # the context filled up
    refused(lambda: s.step(1), CacheFull)
    refused(lambda: generate(lm, s.tokens + [1], 2, session=s), match="the context holds")
    assert greedy(lm, ids, 3, session=s) == greedy(lm, ids, 3, ctx_size=24)   # rewinds to the prompt


# ---- Sampler --------------------------------------------------------------------------------------------------
def test_sampler_errors_are_typed():
    refused(lambda: Sampler(temp=-1), match="temp must be >= 0")
    refused(lambda: Sampler(temperature=1), match="unknown sampling option")
    refused(lambda: Sampler(SamplerConfig(), temp=0), match="not both")
    refused(lambda: Sampler({"temp": 0}), match="SamplerConfig")
    refused(lambda: Sampler(seed=2**64), match="seed")
    refused(lambda: SamplerConfig(top_k=-1).validate(), match="top_k")
    assert isinstance(GenerationError("x"), ValueError)           # callers catching ValueError still do
    s = Sampler(seed=-5)
    assert 0 <= s(torch.randn(10)) < 10


# ---- Chat / Conversation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(temperature=1), "unknown sampling option"), (dict(max_tokens="5"), "max_tokens"),
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=None), "max_tokens"),
    (dict(conversation=[]), "conversation must be a Conversation"), (dict(system=None), "system must be text"),
    (dict(ctx_size="96"), "ctx_size"), (dict(top_p=2), "top_p"),
])
def test_chat_refuses_bad_options(lm_dense, kw, match):
    refused(lambda: Chat(lm_dense, **kw), match=match)


@pytest.mark.parametrize("msg, match", [(None, "must be text"), (5, "must be text"), (b"hi", "must be text"),
                                        ("a\ud800", "the message is not valid Unicode")])
def test_chat_reply_refuses_bad_messages_and_keeps_the_history(lm_dense, msg, match):
    c = Chat(lm_dense, max_tokens=4, ctx_size=96, temp=0)
    first = "".join(c.reply("Hello there"))
    refused(lambda: c.reply(msg), match=match)
    assert c.conv.turns == [("Hello there", first.strip())]        # was: None replied to as "None"


def test_chat_empty_message_is_a_turn(lm_dense):
    c = Chat(lm_dense, max_tokens=4, ctx_size=96, temp=0)
    "".join(c.reply(""))
    assert len(c.conv.turns) == 1


def test_conversation_fields_are_checked(lm_dense):
    refused(lambda: Conversation(turns=None), match="turns")
    refused(lambda: Conversation(turns=[("a",)]), match="turns")
    refused(lambda: Conversation(turns=[("a", None)]), match="turns")
    refused(lambda: Conversation(system=3), match="system")
    refused(lambda: Conversation(user=""), match="blank")
    c = Chat(lm_dense, max_tokens=2, ctx_size=96, conversation=Conversation(system="\udcff"))
    refused(lambda: c.reply("hi"), match="the conversation is not valid Unicode")
    conv = Conversation(turns=[["Hi", "Hello"]])                         # lists from JSON are pairs too
    assert conv.turns == [("Hi", "Hello")]


# ---- prompt caches (files) ------------------------------------------------------------------------------------
def test_prompt_cache_files_misuse(lm, tmp_path):
    s = Session(lm)
    refused(lambda: save_prompt_cache(tmp_path / "p.cache", s), PromptCacheError, "nothing to save")
    refused(lambda: load_prompt_cache(tmp_path / "missing.cache", s), PromptCacheError, "unreadable")
    (tmp_path / "junk.cache").write_bytes(b"not a cache")
    refused(lambda: load_prompt_cache(tmp_path / "junk.cache", s), PromptCacheError)
    s.feed(lm.tokenizer.encode(P))
    save_prompt_cache(tmp_path / "p.cache", s)
    other = Session(lm, ctx_size=4)
    refused(lambda: load_prompt_cache(tmp_path / "p.cache", other), PromptCacheError, "does not fit")
    assert load_prompt_cache(tmp_path / "p.cache", Session(lm)) == s.n_past
    for where in (tmp_path / "no" / "p.cache", tmp_path):            # a missing folder, a folder: was
        refused(lambda: save_prompt_cache(where, s), PromptCacheError, "cannot write")   # SafetensorError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.cache", "p.cache"]    # no temporary left
