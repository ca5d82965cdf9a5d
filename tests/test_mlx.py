"""The MLX backend and export (mlx[cpu] here; Metal is untested): the MLX model gives the torch model's
logits within a stated tolerance and the same greedy tokens, on asa-small over real prose (prefill + 32
decode steps, also with eviction and with chunked prefill) and on the tiny test models (sparse and
dense); its cache honours the engine's Cache protocol; `asa-run export --format mlx` round-trips and
refuses bad input with one line, leaving nothing behind.

Tolerances (float32 on both sides; the two only differ in summation order):
- tiny models: max |logit difference| <= 1e-3 (logits of magnitude ~20; measured 1.2e-4)
- asa-small:   max |logit difference| <= 5e-4 (measured 2.8e-5 over 400 prefill + 32 decode positions;
  the smallest top-1/top-2 margin on the greedy path is 0.025, so the greedy tokens cannot flip)
The MLX side is slow here: the Linux mlx[cpu] wheel bundles the reference (netlib) BLAS, so its matmuls
run ~10x slower than torch's; the variants therefore compare all prefill logits once and the last one
otherwise.
"""
import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error
from click.testing import CliRunner
from conftest import PARAGRAPHS
from parity import assert_parity, greedy_run
from kernel_cases import make_plan, make_qkv, rel_err
from test_generate import needs_analyzer

mx = pytest.importorskip("mlx.core")

import asa_runtime.cli.export  # noqa: E402,F401  (registers `export` on main)
from asa_runtime.backends.mlx_backend import MlxCache  # noqa: E402
from asa_runtime.backends.mlx_model import KVCache, _rope  # noqa: E402
from asa_runtime.cli import main  # noqa: E402
from asa_runtime.errors import BackendError  # noqa: E402
from asa_runtime.generate import from_model, generate, load  # noqa: E402
from asa_runtime.registry import available  # noqa: E402
from asa_runtime.session import Session  # noqa: E402
from kernels.mlx_sparse import sparse_decode_mlx  # noqa: E402
from kernels.reference import sparse_attention_reference  # noqa: E402

TINY_TOL = 1e-3
SMALL_TOL = 5e-4
PROSE = " ".join(PARAGRAPHS)
BOOKS = Path(__file__).resolve().parents[2] / "shared/data/english_prose/standard_ebooks/standard_ebooks_selection.jsonl.xz"
needs_small = pytest.mark.skipif("asa-small" not in available(), reason="asa-small not installed")


# ---- kernel, RoPE and cache ---------------------------------------------------------------------------
def test_sparse_decode_matches_reference():
    keys = make_plan("asa", 1, 1, 24, seed=3, offset=70)                  # one row over a 71-slot cache
    q, k, v = make_qkv(1, 4, 2, 1, 96, 32, torch.float32, seed=3)
    row = keys[0, 0]
    row = row[row >= 0]
    out = sparse_decode_mlx(*(mx.array(t.numpy()) for t in (q, k, v, row)))
    ref = sparse_attention_reference(q, k, v, keys)
    assert out.shape == tuple(q.shape)
    assert rel_err(torch.from_numpy(np.array(out)), ref) < 1e-5


def test_rope_is_the_torch_models_interleaved_rotation():
    from asa_runtime.model import apply_rope, rope_cache

    x = torch.randn(1, 3, 9, 16)
    for pos in (torch.arange(5, 14), torch.tensor([0, 2, 3, 7, 8, 20, 21, 22, 40])):
        ref = apply_rope(x, rope_cache(64, 16, 10000.0)[pos])
        p = int(pos[0]) if bool((pos.diff() == 1).all()) else mx.array(pos.numpy())
        got = _rope(mx.array(x.numpy()), p, 16, 10000.0)                  # fast path, then explicit path
        assert np.abs(np.array(got) - ref.numpy()).max() < 1e-5


def test_cache_writes_rows_by_slot_and_moves_them():
    rng = np.random.default_rng(0)
    cache = MlxCache([KVCache(2, 4, 10, mx.float32) for _ in range(2)])
    ref = [np.zeros((1, 2, 10, 4), np.float32) for _ in range(2)]
    for c, r in zip(cache, ref):
        new = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
        c.update(mx.array([1, 4, 6], dtype=mx.int32), mx.array(new), mx.array(new * 2))
        r[:, :, [1, 4, 6]] = new
    cache.move_slots(np.array([4, 6]), np.array([2, 4]))                  # overlapping: 6 -> 4 after 4 -> 2
    for r in ref:
        r[:, :, [2, 4]] = r[:, :, [4, 6]].copy()
    for c, r in zip(cache, ref):
        assert np.array_equal(np.array(c.k), r) and np.array_equal(np.array(c.v), r * 2)
    st = cache.state(7)
    assert st["layers.0.k"].shape == (2, 7, 4) and st["layers.0.k"].device.type == "cpu"
    other = MlxCache([KVCache(2, 4, 10, mx.float32) for _ in range(2)])
    other.load_state(st)
    assert np.array_equal(np.array(other[1].v)[0, :, :7], r[0, :, :7] * 2)
    with pytest.raises(ValueError, match="does not fit"):
        other.load_state({**st, "layers.1.v": torch.zeros(3, 7, 4)})
    assert cache.nbytes() == 2 * 2 * 2 * 10 * 4 * 4


# ---- parity on the tiny models ------------------------------------------------------------------------
@needs_analyzer
@pytest.mark.parametrize("chunk", [512, 13])
def test_tiny_sparse_parity(tiny_checkpoint, chunk):
    lt = load(tiny_checkpoint)
    lm = load(tiny_checkpoint, backend="mlx")
    ids = lt.tokenizer.encode(PROSE)[:90]
    assert_parity(lt, lm, ids, 24, TINY_TOL, prefill_chunk=chunk)


@needs_analyzer
def test_tiny_sparse_parity_with_eviction(tiny_checkpoint):
    lt, lm = load(tiny_checkpoint), load(tiny_checkpoint, backend="mlx")
    ids = lt.tokenizer.encode(PROSE)[:90]
    st, sm = assert_parity(lt, lm, ids, 24, TINY_TOL, max_kv_size=72, prefill_chunk=16)
    assert sm.slots.compactions > 0                                       # rows really moved


@pytest.mark.parametrize("chunk", [512, 13])
def test_tiny_dense_parity(tiny_dense_checkpoint, chunk):
    lt, lm = load(tiny_dense_checkpoint), load(tiny_dense_checkpoint, backend="mlx")
    ids = lt.tokenizer.encode(PROSE)[:90]
    assert_parity(lt, lm, ids, 24, TINY_TOL, prefill_chunk=chunk)


@needs_analyzer
def test_bonds_view_weights_and_prompt_cache_state(tiny_checkpoint):
    lt, lm = load(tiny_checkpoint), load(tiny_checkpoint, backend="mlx")
    ids = lt.tokenizer.encode(PROSE)[:40]
    st, sm = Session(lt), Session(lm)
    st.feed(ids)
    sm.feed(ids)
    wt, wm = [], []
    st.step(ids[0], attn_out=wt)
    sm.step(ids[0], attn_out=wm)
    assert len(wm) == len(wt) == lt.config.n_layer
    for a, b in zip(wt, wm):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4
    # a session state of the MLX backend restores into a fresh MLX session and continues identically
    restored = Session.from_state(lm, sm.state())
    assert torch.equal(restored.step(5), sm.step(5))


@needs_analyzer
def test_in_memory_model_and_chat(tiny_checkpoint):
    from asa_runtime.chat import Chat

    lt = load(tiny_checkpoint)
    lm = from_model(lt.model, lt.tokenizer, planner=lt.planner, backend="mlx")
    assert generate(lm, PARAGRAPHS[0], 12, temp=0) == generate(lt, PARAGRAPHS[0], 12, temp=0)
    a = "".join(Chat(lm, max_tokens=8, temp=0).reply("Hello there"))
    b = "".join(Chat(lt, max_tokens=8, temp=0).reply("Hello there"))
    assert a == b


# ---- parity on asa-small over real prose --------------------------------------------------------------
def book_prose(tokenizer, n_tokens: int = 400) -> list[int]:
    """About n_tokens of a book's running text (paragraphs from its middle) from ../shared/data; the
    test paragraphs when the data is not beside the checkout."""
    if not BOOKS.is_file():
        return tokenizer.encode(PROSE)
    with lzma.open(BOOKS, "rt", encoding="utf-8") as f:
        text = json.loads(f.readline())["text"]
    paras = [p for p in text.split("\n\n") if len(p) > 200]
    ids = tokenizer.encode("\n\n".join(paras[len(paras) // 2: len(paras) // 2 + 12]))
    return ids[:n_tokens]


@pytest.fixture(scope="module")
def small_pair():
    return load("asa-small"), load("asa-small", backend="mlx")


@needs_small
@pytest.mark.parametrize("kw", [{}, {"prefill_chunk": 64}, {"max_kv_size": "window", "prefill_chunk": 64}],
                         ids=["one-chunk", "chunked", "evicting"])
def test_asa_small_parity(small_pair, kw):
    lt, lm = small_pair
    ids = book_prose(lt.tokenizer)
    assert len(ids) >= 190
    if kw.get("max_kv_size") == "window":
        # a bound the shipped plan fits (its window, sinks and two chunks of room), and prose longer than it,
        # so that the cache must compact: whatever window the shipped asa-small has
        plan = lt.config.plan
        kw = {**kw, "max_kv_size": plan.window + plan.sinks + 2 * kw["prefill_chunk"]}
        ids = book_prose(lt.tokenizer, kw["max_kv_size"] + 160)
        if len(ids) <= kw["max_kv_size"]:
            pytest.skip("needs ../shared/data's books for prose longer than the KV bound")
    st, sm = assert_parity(lt, lm, ids, 32, SMALL_TOL, all_logits=not kw, **kw)
    if "max_kv_size" in kw:
        assert sm.slots.compactions > 0 and sm.cache.n_slots == kw["max_kv_size"]


# ---- export ------------------------------------------------------------------------------------------
def export(*args):
    return CliRunner().invoke(main, ["export", "--format", "mlx", "--no-progress", *map(str, args)])



@needs_analyzer
def test_export_round_trip_generates_the_same_tokens(tmp_path, tiny_checkpoint):
    out = tmp_path / "tiny-mlx"
    r = export("-m", tiny_checkpoint, "-o", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["analyzer", "config.json", "model.safetensors",
                                                     "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-mlx"]     # no temporary folder left
    weights = mx.load(str(out / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in weights and "lm_head.weight" not in weights
    lm = load(out, backend="mlx")
    assert lm.model is None and lm.backend.name == "mlx"
    want = generate(load(tiny_checkpoint), PARAGRAPHS[1], 20, temp=0)
    assert generate(lm, PARAGRAPHS[1], 20, temp=0) == want
    g = CliRunner().invoke(main, ["generate", "-m", str(out), "--backend", "mlx", "-p", PARAGRAPHS[1],
                                  "-n", "20", "--temp", "0"])
    assert g.exit_code == 0, g.output
    assert g.stdout == want + "\n"
    chat_args = ["-n", "8", "--temp", "0", "--ctx-size", "128"]
    c_mlx = CliRunner().invoke(main, ["chat", "-m", str(out), "--backend", "mlx", *chat_args],
                               input="Hello there\n/exit\n")
    c_torch = CliRunner().invoke(main, ["chat", "-m", str(tiny_checkpoint), *chat_args],
                                 input="Hello there\n/exit\n")
    assert c_mlx.exit_code == 0, c_mlx.output
    assert c_mlx.stdout == c_torch.stdout and c_mlx.stdout.strip()
    r = CliRunner().invoke(main, ["generate", "-m", str(out), "-p", "x", "-n", "2"])   # torch backend
    assert_one_line_error(r, "MLX export", "--backend mlx")


@needs_small
def test_asa_small_export_matches_torch(tmp_path, small_pair):
    from asa_runtime.registry import resolve
    from exporters.mlx import export as export_mlx

    out = export_mlx(resolve("asa-small"), tmp_path / "small-mlx", progress=False)
    lm = load(out, backend="mlx")
    lt = small_pair[0]
    ids = book_prose(lt.tokenizer)
    _, _, tok_t, _ = greedy_run(lt, ids, 32, all_logits=False)
    _, _, tok_m, _ = greedy_run(lm, ids, 32, all_logits=False)
    assert tok_m == tok_t


def test_export_bad_input_is_one_line_and_leaves_nothing(tmp_path, tiny_dense_checkpoint, monkeypatch):
    assert_one_line_error(export("-m", tmp_path / "nope", "-o", tmp_path / "o"), "nope")
    assert_one_line_error(export("-m", tiny_dense_checkpoint, "-o", tmp_path / "no" / "such" / "dir"),
                          "does not exist")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(export("-m", tiny_dense_checkpoint, "-o", tmp_path / "afile"), "a file")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dense_checkpoint, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])                                  # truncated weights
    assert_one_line_error(export("-m", bad, "-o", tmp_path / "o"), "checksum mismatch")
    assert_one_line_error(export("-m", tiny_dense_checkpoint, "-o", tmp_path / "o", "--dtype", "float64"))

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mx, "save_safetensors", fail)                    # a write failing midway
    assert_one_line_error(export("-m", tiny_dense_checkpoint, "-o", tmp_path / "o"), "No space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "bad"]


def test_corrupted_export_folder_is_a_one_line_error(tmp_path, tiny_dense_checkpoint):
    out = tmp_path / "dense-mlx"
    assert export("-m", tiny_dense_checkpoint, "-o", out).exit_code == 0
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(BackendError, match="checksum mismatch"):
        load(out, backend="mlx")
    r = CliRunner().invoke(main, ["generate", "-m", str(out), "--backend", "mlx", "-p", "x", "-n", "2"])
    assert_one_line_error(r, "checksum mismatch")
