"""The ONNX Runtime backend (--backend onnx): logits equal the torch backend's on the tiny test models, for a
prefill of prose in one chunk and in chunks and for 32 greedy decode steps with eviction on (the greedy tokens
equal), with the op's function body and with the C++ kernel (exporters/onnx/custom_ops.py) when it builds;
fp16 export separately; the cache protocol; export on first use into the user cache, reused afterwards,
refused when its hashes do not match the checkpoint; unusable cache folder -> one-line error.

Tolerances (float32 graph vs float32 torch; they differ in summation order and ORT's fused kernels):
- float32: max |logit difference| <= 1e-3 (logits of magnitude ~14; measured 5e-6 .. 6e-5)
- float16 export (weights, activations and cache in float16) against torch float32, over 90 prefill
  positions: max |difference| <= 0.3 (measured 0.22 on logits of magnitude ~5), mean <= 0.02, and the
  top-1 token equal at >= 95% of the positions (the tiny model's random weights make near-ties).
Each export of a tiny model takes ~10-40 s here (torch.export + translation); the module exports each
variant once into a temporary cache (ASA_CACHE_DIR).
"""
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import PARAGRAPHS
from parity import assert_parity, greedy_run

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from asa_runtime.backends.onnx_backend import OnnxBackend, OnnxCache  # noqa: E402
from asa_runtime.cli import main  # noqa: E402
from asa_runtime.errors import BackendError  # noqa: E402
from asa_runtime.generate import load  # noqa: E402
from asa_runtime.session import Session  # noqa: E402
from exporters.onnx import custom_ops  # noqa: E402
from exporters.onnx import folder as F  # noqa: E402

TOL = 1e-3
FP16_TOL = 0.3
FP16_MEAN_TOL = 0.02
PROSE = " ".join(PARAGRAPHS)
KERNEL_OK, KERNEL_WHY = custom_ops.available()
KERNELS = ["0", pytest.param("1", marks=pytest.mark.skipif(not KERNEL_OK, reason=f"no kernel: {KERNEL_WHY}"))]


@pytest.fixture(scope="module", autouse=True)
def onnx_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("asa-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASA_CACHE_DIR", str(root))
        yield root


# ---- cache protocol (no export) ---------------------------------------------------------------------
def test_cache_moves_rows_and_round_trips_state():
    rng = np.random.default_rng(0)
    c = OnnxCache(2, 2, 4, 10)
    for a in c.k + c.v:
        a[:] = rng.standard_normal(a.shape)
    ref = [a.copy() for a in c.k + c.v]
    c.move_slots(np.array([4, 6]), np.array([2, 4]))                 # overlapping: 6 -> 4 after 4 -> 2
    for a, r in zip(c.k + c.v, ref):
        r[:, :, [2, 4]] = r[:, :, [4, 6]].copy()
        assert np.array_equal(a, r)
    st = c.state(7)
    assert st["layers.1.v"].shape == (2, 7, 4) and st["layers.1.v"].device.type == "cpu"
    other = OnnxCache(2, 2, 4, 10)
    other.load_state(st)
    assert np.array_equal(other.k[1][:, :, :7], c.k[1][:, :, :7])
    assert c.nbytes() == 4 * 2 * 2 * 1 * 2 * 10 * 4
    with pytest.raises(ValueError):
        OnnxCache(2, 2, 4, 5).load_state(st)                         # 7 rows do not fit 5 slots


# ---- parity ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_torch(tiny_checkpoint):
    return load(tiny_checkpoint)


@pytest.mark.parametrize("kernel", KERNELS)
def test_sparse_parity_one_chunk_chunked_and_evicting(tiny_checkpoint, tiny_torch, kernel, monkeypatch):
    monkeypatch.setenv("ASA_ORT_KERNEL", kernel)
    lo = load(tiny_checkpoint, backend="onnx")
    assert lo.backend.name == "onnx" and lo.backend.kernel == (kernel == "1")
    ids = tiny_torch.tokenizer.encode(PROSE)[:90]
    assert_parity(tiny_torch, lo, ids, 8, TOL, prefill_chunk=512)
    assert_parity(tiny_torch, lo, ids, 8, TOL, prefill_chunk=13)
    st, so = assert_parity(tiny_torch, lo, ids, 32, TOL, all_logits=False, ctx_size=128, max_kv_size=96,
                     prefill_chunk=16)
    assert so.slots.compactions > 0 and so.cache.n_slots == 96       # rows really moved


def test_dense_parity(tiny_dense_checkpoint):
    lt, lo = load(tiny_dense_checkpoint), load(tiny_dense_checkpoint, backend="onnx")
    ids = lt.tokenizer.encode(PROSE)[:90]
    assert_parity(lt, lo, ids, 16, TOL, prefill_chunk=512)
    assert_parity(lt, lo, ids, 16, TOL, all_logits=False, prefill_chunk=13)


def test_float16_export_parity(tiny_checkpoint, tiny_torch):
    lo = load(tiny_checkpoint, backend="onnx", kv_dtype="float16")
    assert lo.backend.raw["dtype"] == "float16" and lo.backend.make_cache(8).k[0].dtype == np.float16
    ids = tiny_torch.tokenizer.encode(PROSE)[:90]
    pre_t, _, _, _ = greedy_run(tiny_torch, ids, 0, prefill_chunk=16)
    pre_o, _, _, _ = greedy_run(lo, ids, 0, prefill_chunk=16)
    d = (pre_t - pre_o).abs()
    assert d.max().item() <= FP16_TOL and d.mean().item() <= FP16_MEAN_TOL
    assert (pre_t.argmax(-1) == pre_o.argmax(-1)).float().mean().item() >= 0.95   # top-1 of the prefill


def test_generate_and_chat_through_the_cli(tiny_checkpoint):
    want = CliRunner().invoke(main, ["generate", "-m", str(tiny_checkpoint), "-p", PARAGRAPHS[1], "-n", "16",
                                     "--temp", "0", "--max-kv-size", "100"])
    got = CliRunner().invoke(main, ["generate", "-m", str(tiny_checkpoint), "--backend", "onnx", "-p",
                                    PARAGRAPHS[1], "-n", "16", "--temp", "0", "--max-kv-size", "100"])
    assert want.exit_code == 0 and got.exit_code == 0, got.output
    assert got.stdout == want.stdout and got.stdout.strip()
    args = ["-n", "8", "--temp", "0", "--ctx-size", "128"]
    c_o = CliRunner().invoke(main, ["chat", "-m", str(tiny_checkpoint), "--backend", "onnx", *args],
                             input="Hello there\n/exit\n")
    c_t = CliRunner().invoke(main, ["chat", "-m", str(tiny_checkpoint), *args], input="Hello there\n/exit\n")
    assert c_o.exit_code == 0, c_o.output
    assert c_o.stdout == c_t.stdout and c_o.stdout.strip()


# ---- the export cache --------------------------------------------------------------------------------
def test_export_is_cached_keyed_by_the_checkpoint_and_checked(tiny_checkpoint, onnx_cache, tmp_path):
    load(tiny_checkpoint, backend="onnx")
    out = F.cache_dir(tiny_checkpoint)
    assert out.parent.parent == onnx_cache and (out / F.GRAPH).is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]      # no temporary folder left
    stamp = (out / F.GRAPH).stat().st_mtime_ns
    be = OnnxBackend(None, source=tiny_checkpoint)                   # reused, not exported again
    assert be.folder == out and (out / F.GRAPH).stat().st_mtime_ns == stamp
    # a cached folder whose recorded source is another checkpoint is refused, in one line
    cfg = json.loads((out / "config.json").read_text())
    bad = dict(cfg, source={**cfg["source"], "config_sha256": "0" * 64})
    (out / "config.json").write_text(json.dumps(bad))
    try:
        with pytest.raises(BackendError, match="different checkpoint") as e:
            OnnxBackend(None, source=tiny_checkpoint)
        assert "\n" not in str(e.value)
    finally:
        (out / "config.json").write_text(json.dumps(cfg))


def test_unusable_cache_folder_is_one_line(tiny_checkpoint, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("ASA_CACHE_DIR", str(blocker / "sub"))
    with pytest.raises(BackendError, match="cannot create the ONNX cache folder"):
        OnnxBackend(None, source=tiny_checkpoint)
    r = CliRunner().invoke(main, ["generate", "-m", str(tiny_checkpoint), "--backend", "onnx", "-p", "x"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0 and r.output.startswith("Error: "), r.output


def test_onnx_backend_refuses_a_gpu_and_in_memory_models(tiny_checkpoint):
    with pytest.raises(BackendError, match="CPU"):
        OnnxBackend(None, device="cuda", source=tiny_checkpoint)
    with pytest.raises(BackendError, match="model folder"):
        OnnxBackend(None, source=None)
    assert os.environ.get("ASA_CACHE_DIR")


def test_session_state_round_trip_continues_identically(tiny_checkpoint, tiny_torch):
    lo = load(tiny_checkpoint, backend="onnx")
    ids = tiny_torch.tokenizer.encode(PROSE)[:60]
    a = Session(lo, prefill_chunk=16)
    a.feed(ids)
    b = Session.from_state(lo, a.state(), prefill_chunk=16)           # through torch CPU tensors
    c = Session.from_state(tiny_torch, a.state(), prefill_chunk=16)   # the torch backend reads it too
    t = int(a.last_logits.argmax())
    la, lb, lc = a.step(t), b.step(t), c.step(t)
    assert torch.equal(la, lb)
    assert (la - lc).abs().max().item() <= TOL
