"""Prompt cache: save / load round trip (KV rows, slot map, plan state), reuse through the CLI's
--prompt-cache flow (the edge opens the file; the engine sees states), refusal of another model's cache and
of damaged files."""
import pytest
import torch
from conftest import PARAGRAPHS, WindowPlanner, build_tiny_checkpoint
from test_generate import needs_analyzer

from asa_runtime.cli.generate import use_prompt_cache
from asa_runtime.generate import Session, generate, load
from asa_runtime.prompt_cache import PromptCacheError, load_prompt_cache, save_prompt_cache


def greedy_after(s, ids, n=15):
    logits, _ = s.prepare(ids)
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = s.step(out[-1])
    return out, logits


@pytest.mark.parametrize("max_kv", [None, 24])
def test_round_trip(tmp_path, tiny_checkpoint, max_kv):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    tok = lm.tokenizer
    prefix, more = tok.encode(PARAGRAPHS[2])[:50], tok.encode(" The end")
    s = Session(lm, ctx_size=200, max_kv_size=max_kv, prefill_chunk=16)
    s.prepare(prefix)
    kv = s.cache.state(s.slots.n_used)
    save_prompt_cache(tmp_path / "p.safetensors", s)
    want, want_last = greedy_after(s, prefix + more)           # continue in the original session

    s2 = Session(lm, ctx_size=200, max_kv_size=max_kv, prefill_chunk=16)
    assert load_prompt_cache(tmp_path / "p.safetensors", s2) == len(prefix)
    assert s2.tokens == prefix
    got_kv = s2.cache.state(s2.slots.n_used)
    assert got_kv.keys() == kv.keys()
    for k in kv:
        assert torch.equal(got_kv[k], kv[k])
    logits, computed = s2.prepare(prefix + more)
    assert computed == len(more)                               # the prefix came from the file
    got, got_last = greedy_after(s2, prefix + more)
    assert got == want
    torch.testing.assert_close(got_last, want_last)


def test_generation_uses_and_writes_the_cache(tmp_path, tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    f = tmp_path / "c.safetensors"

    def cached(prompt):
        s = Session(lm)
        return generate(lm, prompt, 20, temp=0, session=s, on_prompt=use_prompt_cache(f, s))
    base = generate(lm, PARAGRAPHS[0], 20, temp=0)
    assert cached(PARAGRAPHS[0]) == base                   # miss: computes and saves
    assert f.exists()
    mtime = f.stat().st_mtime_ns
    assert cached(PARAGRAPHS[0]) == base                   # exact hit: nothing computed, nothing written
    assert f.stat().st_mtime_ns == mtime
    longer = PARAGRAPHS[0] + " " + PARAGRAPHS[1]
    assert cached(longer) == generate(lm, longer, 20, temp=0)


@needs_analyzer
def test_round_trip_real_planner(tmp_path, tiny_checkpoint):
    lm = load(tiny_checkpoint)
    ids = lm.tokenizer.encode(PARAGRAPHS[4])
    s = Session(lm, ctx_size=256)
    s.prepare(ids[:40])
    save_prompt_cache(tmp_path / "p.safetensors", s)
    want, _ = greedy_after(s, ids)
    s2 = Session(lm, ctx_size=256)
    load_prompt_cache(tmp_path / "p.safetensors", s2)
    assert greedy_after(s2, ids)[0] == want


def test_refuses_another_model(tmp_path, tiny_checkpoint, tiny_tokenizer):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    s = Session(lm, ctx_size=100)
    s.prepare(lm.tokenizer.encode(PARAGRAPHS[0])[:20])
    save_prompt_cache(tmp_path / "p.safetensors", s)
    other = load(build_tiny_checkpoint(tmp_path / "other", tiny_tokenizer, seed=1), planner=WindowPlanner())
    with pytest.raises(PromptCacheError, match="another model"):
        load_prompt_cache(tmp_path / "p.safetensors", Session(other, ctx_size=100))
    quant = load(tiny_checkpoint, planner=WindowPlanner(), quantize="int8")   # same folder, other weights in use
    with pytest.raises(PromptCacheError, match="another model"):
        load_prompt_cache(tmp_path / "p.safetensors", Session(quant, ctx_size=100))


def test_damaged_files(tmp_path, tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    s = Session(lm, ctx_size=100)
    s.prepare(lm.tokenizer.encode(PARAGRAPHS[0])[:20])
    p = save_prompt_cache(tmp_path / "p.safetensors", s)
    data = p.read_bytes()
    (tmp_path / "trunc").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk").write_bytes(b"not a safetensors file at all")
    for name in ("trunc", "junk"):
        with pytest.raises(PromptCacheError, match="unreadable"):
            load_prompt_cache(tmp_path / name, Session(lm, ctx_size=100))
    with pytest.raises(PromptCacheError, match="does not fit"):
        load_prompt_cache(p, Session(lm, ctx_size=10))


@needs_analyzer
def test_crafted_cache_with_a_valid_header_is_refused(tmp_path, tiny_checkpoint):
    """A file that passes the format and model-hash checks but carries hostile fields is refused field by
    field, the session is left empty, and the CLI flow does not save anything from it."""
    import math

    from asa_runtime.prompt_cache import read_state, write_state

    lm = load(tiny_checkpoint)
    ids = lm.tokenizer.encode(PARAGRAPHS[4])[:40]
    s = Session(lm, ctx_size=128)
    s.prepare(ids)
    good = tmp_path / "good.safetensors"
    save_prompt_cache(good, s)

    def crafted(edit):
        st = read_state(good, lm.model_hash)
        edit(st["tensors"], st["meta"])
        p = tmp_path / "bad.safetensors"
        write_state(p, st, lm.model_hash)
        return p

    def plan_word(t, m):
        t["plan.tok_word"] = t["plan.tok_word"].flip(0).contiguous()

    def nan_logits(t, m):
        t["last_logits"][0] = math.nan

    def nan_rows(t, m):
        t["layers.0.k"][0, 0, 0] = math.inf

    def big_token(t, m):
        t["tokens"][3] = 10**6

    def slots_past(t, m):
        t["slot2pos"][-1] = 10**5

    def short_logits(t, m):
        t["last_logits"] = t["last_logits"][:5].contiguous()

    for edit in (plan_word, nan_logits, nan_rows, big_token, slots_past, short_logits):
        p = crafted(edit)
        s2 = Session(lm, ctx_size=128)
        with pytest.raises(PromptCacheError):
            load_prompt_cache(p, s2)
        assert s2.tokens == [] and s2.last_logits is None, edit.__name__
        mtime = p.stat().st_mtime_ns
        with pytest.raises(PromptCacheError):            # the CLI's flow: refused before anything runs
            use_prompt_cache(p, Session(lm, ctx_size=128))
        assert p.stat().st_mtime_ns == mtime
