"""Checkpoint folder: exact round trips (single file, shards, half precision) and one-line errors."""
import json

import pytest
import torch

from asa_runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from asa_runtime.config import PRESETS, ModelConfig, PlanConfig
from asa_runtime.model import Transformer
from asa_runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["the cat sat on the mat, and the dog ran."] * 10, vocab_size=300)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["test"], "plan": PlanConfig(mode="pos_only", k=32)})
    return Transformer(cfg)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_roundtrip_exact(tmp_path, model, tok):
    save_checkpoint(tmp_path / "m", model, tok, card="# test model", meta={"step": 7})
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    ck = load_checkpoint(tmp_path / "m")
    assert _same(ck.model, model)
    assert ck.config == model.cfg and ck.config.plan.mode == "pos_only" and ck.config.plan.k == 32
    assert ck.meta == {"step": 7}
    assert ck.tokenizer.encode("the cat") == tok.encode("the cat")
    # tied embeddings stored once, and still tied after loading
    from safetensors import safe_open
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert "output.weight" not in f.keys()
    assert ck.model.output.weight is ck.model.tok_embeddings.weight
    x = torch.randint(0, 300, (1, 9))
    assert torch.equal(ck.model(x), model.eval()(x))


def test_sharded_roundtrip(tmp_path, model, tok):
    save_checkpoint(tmp_path / "m", model, tok, shard_bytes=40_000)
    shards = sorted(p.name for p in (tmp_path / "m").glob("model-*.safetensors"))
    assert len(shards) > 2 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert not (tmp_path / "m" / "model.safetensors").exists()
    assert _same(load_checkpoint(tmp_path / "m").model, model)


def test_bf16_storage_loads_fp32(tmp_path, model, tok):
    save_checkpoint(tmp_path / "m", model, tok, dtype=torch.bfloat16)
    ck = load_checkpoint(tmp_path / "m")
    w = ck.model.layers[0].attention.wqkv.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, model.layers[0].attention.wqkv.weight.to(torch.bfloat16).float())
    assert json.loads((tmp_path / "m" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def _err(path, verify: bool = True) -> str:
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(path, verify=verify)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_errors(tmp_path, model, tok):
    assert "no such model folder" in _err(tmp_path / "nope")
    d = save_checkpoint(tmp_path / "m", model, tok)
    w = d / "model.safetensors"
    blob = w.read_bytes()

    w.write_bytes(blob[: len(blob) // 2])                      # truncated
    assert "truncated or corrupted" in _err(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("files")                                           # no checksums: refused unless --no-verify
    (d / "config.json").write_text(json.dumps(cfg))
    assert "records no weight checksums" in _err(d)
    assert "unreadable safetensors" in _err(d, verify=False)   # ... then the library's own check
    w.write_bytes(b"\x00\x01garbage")
    assert "unreadable safetensors" in _err(d, verify=False)

    w.write_bytes(blob)
    (d / "config.json").write_text("{not json")
    assert "cannot parse config" in _err(d)
    (d / "config.json").unlink()
    assert "missing config.json" in _err(d)


def test_mismatched_tensors(tmp_path, model, tok):
    from safetensors.torch import save_file
    d = save_checkpoint(tmp_path / "m", model, tok)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("files")
    (d / "config.json").write_text(json.dumps(cfg))
    from asa_runtime.checkpoint import model_state
    sd = model_state(model)

    save_file({k: v for k, v in sd.items() if k != "norm.weight"}, str(d / "model.safetensors"))
    assert "missing tensor norm.weight" in _err(d, verify=False)
    save_file({**sd, "bogus": torch.zeros(2)}, str(d / "model.safetensors"))
    assert "unexpected tensor bogus" in _err(d, verify=False)
    save_file({**sd, "norm.weight": torch.zeros(3)}, str(d / "model.safetensors"))
    assert "norm.weight has shape" in _err(d, verify=False)
    (d / "model.safetensors").unlink()
    assert "missing weights" in _err(d, verify=False)
    save_file(sd, str(d / "model.safetensors"))
    (d / "tokenizer.json").unlink()
    assert "missing tokenizer.json" in _err(d, verify=False)


def test_folder_reads_only_itself_and_verifies_everything(tmp_path, model, tok):
    """Index names that leave the folder are refused; every shard and the tokenizer are hash-checked."""
    d = save_checkpoint(tmp_path / "m", model, tok, shard_bytes=20_000)
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((d / first).read_bytes())
    for name in ("../outside.safetensors", str(outside), "", "sub/x.safetensors"):
        bad = {**index, "weight_map": {**index["weight_map"], "norm.weight": name}}
        index_path.write_text(json.dumps(bad))
        assert "inside the model folder" in _err(d) or "outside the model folder" in _err(d), name
        assert "model folder" in _err(d, verify=False)     # no --no-verify escape for paths
    # a shard under a name config.json does not list: refused, not loaded unchecked
    renamed = {**index, "weight_map": {k: ("other.safetensors" if v == first else v)
                                       for k, v in index["weight_map"].items()}}
    (d / "other.safetensors").write_bytes((d / first).read_bytes())
    index_path.write_text(json.dumps(renamed))
    assert "has no checksum" in _err(d)
    index_path.write_text(json.dumps(index))
    load_checkpoint(d)                                     # intact again
    (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text().replace('"<|endoftext|>"', '"<|end|>"', 1))
    assert "tokenizer.json: checksum mismatch" in _err(d)


@pytest.mark.parametrize("field,value,msg", [
    ("n_head", 0, "n_head must be >= 1"), ("n_layer", -3, "n_layer must be >= 1"), ("d_model", 64.5, "integer"),
    ("n_layer", True, "integer"), ("plan", None, "plan must be"), ("plan", "full", "plan must be"),
    ("norm_eps", "1e-5", "number"), ("n_layer", 10**7, "GiB but only"), ("vocab_size", 10**12, "GiB but only"),
])
def test_hostile_config_values(tmp_path, model, tok, field, value, msg):
    d = save_checkpoint(tmp_path / "m", model, tok)
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = value
    (d / "config.json").write_text(json.dumps(cfg))
    assert msg in _err(d)


def test_hostile_plan_values(tmp_path, model, tok):
    d = save_checkpoint(tmp_path / "m", model, tok)
    for field, value in (("k", 0), ("k", "64"), ("window", -1), ("mode", 3), ("cross_sentence", "yes")):
        cfg = json.loads((d / "config.json").read_text())
        cfg["plan"][field] = value
        (d / "config.json").write_text(json.dumps(cfg))
        assert "cannot parse config" in _err(d), (field, value)


@pytest.mark.parametrize("value", [[], {"a": 1}, 3, None, "float64"])
def test_a_torch_dtype_that_is_not_a_dtype_name_is_ignored(tmp_path, model, tok, value):
    """`torch_dtype` only says how the shards are stored; any other JSON value (a list or a dict raised
    TypeError: unhashable, found by tests/test_fuzz.py) loads the weights as float32 like an unknown name."""
    d = save_checkpoint(tmp_path / "m", model, tok)
    cfg = json.loads((d / "config.json").read_text())
    cfg["torch_dtype"] = value
    (d / "config.json").write_text(json.dumps(cfg))
    for verify in (True, False):
        ck = load_checkpoint(d, verify=verify)
        assert ck.model.layers[0].attention.wqkv.weight.dtype == torch.float32
        assert _same(ck.model, model)
