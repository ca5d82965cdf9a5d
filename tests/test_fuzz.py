"""Fuzz suite (issue 15), on a fixed budget in CI: tokenizer, analyzer, planner (the AttentionPlan contract
checked on every input), config and model-folder loaders on crafted files, prompt-cache reading and
Session.restore on crafted states. Every failure must be a one-line error of the documented type
(asa_runtime/errors.py), never another exception.

The same targets run longer from `python bench/fuzz/fuzz.py --n 100000` (bench/fuzz/results.md); the CI
budget is FUZZ_EXAMPLES examples per target (env ASA_FUZZ_EXAMPLES overrides it)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asa_runtime.config import MODES, ModelConfig, PlanConfig
from asa_runtime.errors import CheckpointError, GenerationError, PromptCacheError, require_unicode
from asa_runtime.linguistics.analyzer import Analyzer
from asa_runtime.linguistics.features import N_UPOS
from asa_runtime.linguistics.plan import validate_rows
from asa_runtime.linguistics.planner import Planner

FUZZ_EXAMPLES = int(os.environ.get("ASA_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
COUNTS: Counter = Counter()        # inputs run per target (bench/fuzz/fuzz.py reports them)


def one_line_error(e: BaseException, *types) -> None:
    """The contract for bad input: an error of one of `types` whose message is one non-empty line."""
    assert isinstance(e, types), f"{type(e).__name__} is not one of {[t.__name__ for t in types]}: {e}"
    msg = str(e)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"


# --- text: tokenizer, analyzer, planner ----------------------------------------------------------------------
WORDS = ("the a dog man idea ate saw himself her he she it they John and that who said Mr . , ; ! ? \" ' 's "
         "n't \n\n \n").split(" ")
text_st = st.one_of(st.text(max_size=200),
                    st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join),
                    st.tuples(st.sampled_from(list("a.-'\"!)\u4e00 \n\ud800")), st.integers(0, 400))
                    .map(lambda t: t[0] * t[1]))
piece_st = st.one_of(st.sampled_from(WORDS).map(lambda w: " " + w), st.sampled_from(WORDS), st.text(max_size=6),
                     st.text(min_size=50, max_size=300))
pieces_st = st.lists(piece_st, min_size=1, max_size=50)
cfg_st = st.builds(PlanConfig, mode=st.sampled_from([m for m in MODES if m != "none"]), k=st.integers(1, 70),
                   window=st.integers(0, 20), sinks=st.integers(0, 5), stride=st.sampled_from([0, 1, 3, 64]),
                   lookback_words=st.integers(0, 100), cross_sentence=st.booleans(), seed=st.integers(0, 2**32))


@lru_cache(maxsize=1)
def asa_small_tokenizer():
    from asa_runtime.registry import resolve
    from asa_runtime.tokenizer import Tokenizer

    return Tokenizer.from_file(resolve("asa-small") / "tokenizer.json")


@FUZZ
@given(text_st)
def test_fuzz_tokenizer(text):
    COUNTS["tokenizer"] += 1
    tok = asa_small_tokenizer()
    try:
        require_unicode(text)
    except GenerationError as e:          # lone surrogates are refused at the edge, with one line
        one_line_error(e, GenerationError)
        return
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text         # byte-level BPE: every valid text round-trips
    pieces = [tok.pieces[i] for i in ids]
    keys = Planner(PlanConfig(mode="full")).plan(pieces)
    if ids:
        validate_rows(keys)


@FUZZ
@given(pieces_st)
def test_fuzz_analyzer(pieces):
    COUNTS["analyzer"] += 1
    st_ = Analyzer.default().start()
    prev_w = prev_s = -1
    for i, p in enumerate(pieces):
        w = st_.push(p)
        assert w in (prev_w, prev_w + 1) and len(st_) == i + 1
        f = st_.features(i)
        assert 0 <= f.upos < N_UPOS and f.sentence >= prev_s and f.word == w
        f.feature_names()
        prev_w, prev_s = w, f.sentence


@FUZZ
@given(pieces_st, cfg_st, st.data())
def test_fuzz_planner_contract(pieces, cfg, data):
    COUNTS["planner"] += 1
    planner = Planner(cfg)
    keys = planner.plan(pieces)
    assert keys.shape == (len(pieces), cfg.k)
    validate_rows(keys)
    cut = data.draw(st.integers(1, len(pieces)))
    inc = planner.incremental()
    head = inc.extend_many(pieces[:cut])
    assert np.array_equal(head, keys[:cut])                       # causal at token granularity
    resumed = planner.incremental_from_state(inc.state_dict())  # a prompt cache's plan state goes on alike
    for i, p in enumerate(pieces[cut:], start=cut):
        assert np.array_equal(resumed.extend(p), keys[i])
    inc.reachable()


# --- config ---------------------------------------------------------------------------------------------------
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                      st.text(max_size=8))
json_value = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=3),
                                                         st.dictionaries(st.text(max_size=6), c, max_size=3)),
                          max_leaves=6)
MODEL_FIELDS = list(ModelConfig().to_dict())
PLAN_FIELDS = list(PlanConfig().to_dict())
small_int = st.integers(-2, 70)


def plausible(names, valid):
    """Dicts over the real field names: mostly valid values, some hostile ones."""
    return st.fixed_dictionaries({}, optional={n: st.one_of(st.just(valid[n]), small_int, json_value)
                                               for n in names})


plan_dict = plausible(PLAN_FIELDS, PlanConfig().to_dict()).map(lambda d: {**d, "mode": d.get("mode", "full")})
model_dict = st.tuples(plausible(MODEL_FIELDS, ModelConfig().to_dict()),
                       st.one_of(plan_dict, json_value)).map(lambda t: {**t[0], "plan": t[1]})


@FUZZ
@given(st.one_of(model_dict, plan_dict, st.dictionaries(st.text(max_size=10), json_value, max_size=5)))
def test_fuzz_config_from_dict(d):
    COUNTS["config"] += 1
    for cls in (ModelConfig, PlanConfig):
        try:
            c = cls.from_dict(d)
        except ValueError as e:
            one_line_error(e, ValueError)
        else:
            assert cls.from_dict(json.loads(json.dumps(c.to_dict()))) == c    # what loads, round-trips


# --- model folders ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def tiny_folder() -> Path:
    """A tiny valid model folder made with the project's own code (tests/conftest.py), built once."""
    from conftest import _train_tokenizer, build_tiny_checkpoint

    d = Path(tempfile.mkdtemp(prefix="asa-fuzz-"))
    build_tiny_checkpoint(d / "tiny", _train_tokenizer())
    return d / "tiny"


def mutate_bytes(data: bytes, how: int, at: float, value: int) -> bytes:
    pos = int(at * len(data)) if data else 0
    if how == 0:
        return data[:pos]                                          # truncated
    if how == 1 and data:
        return data[:pos] + bytes([data[min(pos, len(data) - 1)] ^ (value or 1)]) + data[pos + 1:]   # bit flip
    if how == 2:
        return data[:pos] + bytes([value]) * 17 + data[pos:]        # inserted garbage
    return b""


file_edit = st.tuples(st.sampled_from(["config.json", "tokenizer.json", "model.safetensors.index.json",
                                       "model.safetensors", "README.md"]),
                      st.integers(0, 3), st.floats(0, 1), st.integers(0, 255))
config_edit = st.tuples(st.sampled_from(MODEL_FIELDS + ["files", "tokenizer", "analyzer", "torch_dtype",
                                                        "format", "plan.k", "plan.mode", "plan.window"]),
                        st.one_of(json_value, small_int, st.sampled_from(["../x", "/etc/passwd", "float16"])))


@FUZZ
@given(st.lists(file_edit, max_size=2), st.lists(config_edit, max_size=3), st.booleans(),
       st.sampled_from([None, "remove", "escape"]))
def test_fuzz_model_folder_loaders(file_edits, config_edits, verify, index_change):
    from asa_runtime.checkpoint import load_checkpoint, read_config

    COUNTS["model_folder"] += 1
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "m"
        shutil.copytree(tiny_folder(), folder)
        cfg_path = folder / "config.json"
        raw = json.loads(cfg_path.read_text())
        for key, value in config_edits:
            if key.startswith("plan.") and isinstance(raw.get("plan"), dict):
                raw["plan"][key[5:]] = value
            else:
                raw[key] = value
        cfg_path.write_text(json.dumps(raw))
        if index_change == "escape" and (folder / "model.safetensors").is_file():
            (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../m/model.safetensors"}}))
        for name, how, at, value in file_edits:
            f = folder / name
            if f.is_file():
                f.write_bytes(mutate_bytes(f.read_bytes(), how, at, value))
        if index_change == "remove":
            for f in folder.glob("*.safetensors*"):
                f.unlink()
        for fn in (lambda: read_config(folder), lambda: load_checkpoint(folder, verify=verify)):
            try:
                fn()
            except CheckpointError as e:
                one_line_error(e, CheckpointError)


# --- prompt caches and session states --------------------------------------------------------------------------
@lru_cache(maxsize=1)
def tiny_session_state():
    from asa_runtime.generate import Session, load
    from asa_runtime.prompt_cache import write_state

    lm = load(tiny_folder())
    s = Session(lm, ctx_size=96)
    s.feed(lm.tokenizer.encode("The old man looked at the children. He said that it was late.")[:40])
    path = Path(tempfile.mkdtemp(prefix="asa-fuzz-")) / "p.cache"
    write_state(path, s.state(), lm.model_hash)
    return lm, path.read_bytes(), s.state()


tensor_edit = st.tuples(st.sampled_from(["tokens", "slot2pos", "last_logits", "plan.tok_word", "plan.w_start",
                                         "plan.w_upos", "plan.antecedents", "layers.0.k", "plan.w_sent"]),
                        st.sampled_from(["set", "drop", "resize", "dtype"]), st.floats(0, 1),
                        st.one_of(st.integers(-2**40, 2**40), st.sampled_from([float("nan"), float("inf"), -1])))
meta_edit = st.tuples(st.sampled_from(["n_pos", "dense", "plan_meta", "plan_meta.w_text", "plan_meta.seg",
                                       "plan_meta.done_word", "plan_meta.ctx", "plan_meta.plan"]),
                      st.one_of(json_value, small_int))


def edit_tensor(t: torch.Tensor, how: str, at: float, value) -> torch.Tensor | None:
    if how == "drop":
        return None
    if how == "resize":
        n = t.shape[0] if t.ndim else 1
        return t.reshape(-1)[: int(at * n)].clone()
    if how == "dtype":
        return t.to(torch.float16 if not t.is_floating_point() else torch.int64)
    t = t.clone()
    if t.numel():
        flat = t.reshape(-1)
        i = int(at * (flat.numel() - 1))
        try:
            flat[i] = value
        except (RuntimeError, OverflowError):
            flat[i] = -1
    return t


@FUZZ
@given(st.lists(tensor_edit, max_size=3), st.lists(meta_edit, max_size=2),
       st.one_of(st.none(), st.tuples(st.integers(0, 3), st.floats(0, 1), st.integers(0, 255))))
def test_fuzz_prompt_cache_and_restore(tensor_edits, meta_edits, byte_edit):
    from asa_runtime.generate import Session
    from asa_runtime.prompt_cache import read_state, write_state

    COUNTS["prompt_cache"] += 1
    lm, blob, good = tiny_session_state()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.cache"
        if byte_edit is not None:                       # a damaged file: read_state refuses it or reads it
            path.write_bytes(mutate_bytes(blob, *byte_edit))
            try:
                state = read_state(path, lm.model_hash)
            except PromptCacheError as e:
                one_line_error(e, PromptCacheError)
                return
        else:
            tensors = dict(good["tensors"])
            meta = json.loads(json.dumps(good["meta"]))
            for name, how, at, value in tensor_edits:
                if name in tensors:
                    new = edit_tensor(tensors[name], how, at, value)
                    if new is None:
                        del tensors[name]
                    else:
                        tensors[name] = new
            for key, value in meta_edits:
                if key.startswith("plan_meta.") and isinstance(meta.get("plan_meta"), dict):
                    meta["plan_meta"][key[len("plan_meta."):]] = value
                else:
                    meta[key] = value
            write_state(path, {"tensors": tensors, "meta": meta}, lm.model_hash)
            state = read_state(path, lm.model_hash)
        s = Session(lm, ctx_size=96)
        try:
            n = s.restore(state)
        except GenerationError as e:
            one_line_error(e, GenerationError)
            assert s.n_past == 0                         # a state that failed leaves the session empty
            return
        assert n == len(s.tokens)
        s.step(1)                                        # a restored session goes on


def test_restore_refuses_a_slot_map_shorter_than_its_tokens():
    from asa_runtime.generate import Session

    lm, _, good = tiny_session_state()
    tensors = dict(good["tensors"], slot2pos=good["tensors"]["slot2pos"][:0].clone())
    s = Session(lm, ctx_size=96)
    with pytest.raises(GenerationError, match="slot map lacks positions"):
        s.restore({"tensors": tensors, "meta": good["meta"]})
    assert s.n_past == 0


@pytest.mark.parametrize("name", ["tokens", "slot2pos"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bool])
def test_restore_refuses_ids_that_are_not_integers(name, dtype):
    """A float16 token tensor holding 65520 (inf in that dtype) raised OverflowError from int() in
    Session.restore (found by the long fuzz run, bench/fuzz/results.md); ids and positions must be integers."""
    from asa_runtime.generate import Session

    lm, _, good = tiny_session_state()
    bad = good["tensors"][name].clone()
    bad[0] = 65520
    tensors = dict(good["tensors"], **{name: bad.to(dtype)})
    s = Session(lm, ctx_size=96)
    with pytest.raises(GenerationError, match="must be an integer tensor") as ei:
        s.restore({"tensors": tensors, "meta": good["meta"]})
    one_line_error(ei.value, GenerationError)
    assert s.n_past == 0
    assert Session(lm, ctx_size=96).restore(good) == len(good["tensors"]["tokens"])   # the real state still does
