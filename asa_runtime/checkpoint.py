"""The model folder (../shared/DESIGN.md "A model on disk"), Hugging Face conventions, no pickles:

    config.json                      ModelConfig (incl. the ASA plan) + format, dtype, tokenizer and
                                     analyzer versions, sha256 of every weight file, free-form meta
    model.safetensors                weights (tied embeddings stored once), or shards
    model-0000N-of-0000M.safetensors + model.safetensors.index.json
    tokenizer.json                   the byte-level BPE
    analyzer/                        copies of asa_runtime/linguistics/artifacts/* (if any exist)
    README.md                        model card (text given by the caller)

Every failure to read a folder raises CheckpointError with a one-line message.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import CheckpointError  # noqa: F401  (re-exported: callers catch checkpoint.CheckpointError)
from .model import Transformer
from .resources import check_fits
from .tokenizer import Tokenizer

FORMAT = "asa-checkpoint/1"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
CARD = "README.md"
ANALYZER_DIR = "analyzer"
ARTIFACTS = Path(__file__).parent / "linguistics" / "artifacts"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}




@dataclass
class Checkpoint:
    model: "torch.nn.Module"
    tokenizer: Tokenizer
    config: ModelConfig
    meta: dict = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dtype_name(dtype: torch.dtype) -> str:
    for name, d in _DTYPES.items():
        if d == dtype:
            return name
    raise ValueError(f"unsupported checkpoint dtype {dtype}")


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}.get(name, name)
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected float32, float16 or bfloat16")
    return _DTYPES[name]


def analyzer_info() -> dict:
    """Version of the analyzer and sha256 of its shipped artifacts (tagger, lexicon tables)."""
    from . import linguistics

    arts = {p.name: sha256_file(p) for p in sorted(ARTIFACTS.glob("*")) if p.is_file()} if ARTIFACTS.is_dir() else {}
    return {"version": getattr(linguistics, "__version__", None), "artifacts": arts}


def model_analyzer(path, raw_config: dict):
    """The analyzer a model was trained with: its folder's analyzer/ copy, else the package's artifacts
    when their sha256 match what config.json recorded. A mismatch would silently change every plan, so
    it is an error."""
    from .linguistics.analyzer import Analyzer

    path = Path(path)
    want = (raw_config.get("analyzer") or {}).get("artifacts") or {}
    local = path / ANALYZER_DIR
    if local.is_dir() and any(local.iterdir()):
        have = {p.name: sha256_file(p) for p in sorted(local.iterdir()) if p.is_file()}
        if want and have != want:
            raise CheckpointError(f"{local}: analyzer artifacts differ from those recorded in config.json")
        return Analyzer.load(local)
    if want and analyzer_info()["artifacts"] != want:
        raise CheckpointError(f"{path.name} was trained with analyzer artifacts that are neither in its folder "
                              f"nor in this package (sha256 mismatch); reinstall the matching asa-runtime")
    return Analyzer.default()


def model_state(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Persistent weights under Llama names (split projections), contiguous, on CPU; a tied output head is
    dropped (it is the embedding)."""
    sd = model.llama_state_dict() if hasattr(model, "llama_state_dict") else model.state_dict()
    cfg = getattr(model, "cfg", None)
    if cfg is not None and cfg.tie_embeddings:
        sd.pop("output.weight", None)
    out = {}
    for k, v in sd.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous().clone()
    return out


def _shard(state: dict[str, torch.Tensor], shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    return shards


def save_checkpoint(path, model, tokenizer: Tokenizer, card: str | None = None, dtype=None,
                    shard_bytes: int = 16 * 2**20, meta: dict | None = None, copy_analyzer: bool = True) -> Path:
    """Write the model folder at `path` (created; existing files of the same names are replaced).
    copy_analyzer=False records the analyzer artifacts' sha256 without copying them (the models shipped
    inside the package use the package's own artifacts; see model_analyzer)."""
    from safetensors.torch import save_file

    from . import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = parse_dtype(dtype)
    state = model_state(model, dtype)
    stored = dtype or next(iter(state.values())).dtype
    for old in list(path.glob("model*.safetensors")) + [path / INDEX]:
        old.unlink(missing_ok=True)

    shards = _shard(state, shard_bytes)
    files: dict[str, str] = {}
    if len(shards) == 1:
        save_file(shards[0], str(path / WEIGHTS), metadata={"format": "pt"})
        files[WEIGHTS] = sha256_file(path / WEIGHTS)
    else:
        weight_map = {}
        for i, sh in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(sh, str(path / name), metadata={"format": "pt"})
            files[name] = sha256_file(path / name)
            weight_map.update({k: name for k in sh})
        total = sum(v.numel() * v.element_size() for v in state.values())
        (path / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                             indent=2, sort_keys=True) + "\n")

    tokenizer.save(path / TOKENIZER)
    info = analyzer_info()
    if info["artifacts"] and copy_analyzer:
        (path / ANALYZER_DIR).mkdir(exist_ok=True)
        for name in info["artifacts"]:
            shutil.copyfile(ARTIFACTS / name, path / ANALYZER_DIR / name)

    config = model.cfg.to_dict()
    config.update({
        "format": FORMAT,
        "asa_runtime_version": __version__,
        "torch_dtype": dtype_name(stored),
        "architecture": "asa-llama",
        "tokenizer": {"file": TOKENIZER, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                      "sha256": sha256_file(path / TOKENIZER)},
        "analyzer": info,
        "files": files,
        "meta": meta or {},
    })
    (path / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if card is not None:
        (path / CARD).write_text(card if card.endswith("\n") else card + "\n")
    return path


def read_config(path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the whole config.json dict) of a model folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model folder")
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"{path}: missing {CONFIG}")
    try:
        raw = json.loads(cfg_path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return ModelConfig.from_dict(raw), raw
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: cannot parse config ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _inside(path: Path, name) -> Path:
    """path / name, refused unless name is a plain file name of this folder (no ../, no absolute path)."""
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise CheckpointError(f"{path / INDEX}: weight file {name!r} is not a file name inside the model folder")
    f = (path / name).resolve()
    if f.parent != path.resolve():
        raise CheckpointError(f"{path / INDEX}: weight file {name!r} resolves outside the model folder")
    return f


def _weight_files(path: Path) -> list[str]:
    if (path / INDEX).is_file():
        try:
            index = json.loads((path / INDEX).read_text())
            names = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path / INDEX}: cannot parse index ({_one_line(e)})") from None
        for name in names:
            _inside(path, name)
        return names
    if (path / WEIGHTS).is_file():
        return [WEIGHTS]
    raise CheckpointError(f"{path}: missing weights ({WEIGHTS} or {INDEX})")


def verify_hashes(path: Path, raw: dict) -> None:
    """Every weight file and the tokenizer must match the sha256 recorded in config.json. A folder that
    records none is refused: load it with verify=False (`--no-verify`) if you trust it."""
    sums = raw.get("files")
    if not isinstance(sums, dict) or not sums:
        raise CheckpointError(f"{path / CONFIG}: records no weight checksums ('files'); pass --no-verify to "
                              f"load an unverified folder")
    for name in _weight_files(path):
        if name not in sums:
            raise CheckpointError(f"{path / name}: weight file has no checksum in {CONFIG}")
    tok_sum = (raw.get("tokenizer") or {}).get("sha256") if isinstance(raw.get("tokenizer"), dict) else None
    if not tok_sum:
        raise CheckpointError(f"{path / CONFIG}: records no tokenizer checksum; pass --no-verify to load it")
    if (path / TOKENIZER).is_file() and sha256_file(path / TOKENIZER) != tok_sum:
        raise CheckpointError(f"{path / TOKENIZER}: checksum mismatch (file changed or corrupted)")


def read_weights(path, raw: dict | None = None, verify: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a model folder (CPU). Checks the sha256 recorded in config.json when present."""
    from safetensors.torch import load_file

    path = Path(path)
    sums = (raw or {}).get("files", {}) if verify else {}
    state: dict[str, torch.Tensor] = {}
    for name in _weight_files(path):
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: missing weight shard {name}")
        if name in sums and sha256_file(f) != sums[name]:
            raise CheckpointError(f"{f}: checksum mismatch (file truncated or corrupted)")
        try:
            part = load_file(str(f))
        except Exception as e:  # safetensors raises its own error type for truncated/garbled files
            raise CheckpointError(f"{f}: unreadable safetensors ({_one_line(e)})") from None
        dup = state.keys() & part.keys()
        if dup:
            raise CheckpointError(f"{f}: tensor {sorted(dup)[0]} appears in two shards")
        state.update(part)
    return state


def load_checkpoint(path, device="cpu", dtype=None, verify: bool = True) -> Checkpoint:
    """Load a model folder. dtype None: float32 on CPU (half-precision files are upcast), else as stored.
    verify: refuse files whose sha256 is not the one config.json records (see verify_hashes)."""
    path = Path(path)
    cfg, raw = read_config(path)
    if verify:
        verify_hashes(path, raw)
    try:     # the weights this config implies (float32 in memory at most), before reading or allocating
        check_fits(4 * cfg.param_count(), f"{path.name} ({cfg.param_count() / 1e6:.0f}M parameters)", device)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    tok_path = path / TOKENIZER
    if not tok_path.is_file():
        raise CheckpointError(f"{path}: missing {TOKENIZER}")
    try:
        tokenizer = Tokenizer.from_file(tok_path)
    except Exception as e:
        raise CheckpointError(f"{tok_path}: cannot load tokenizer ({_one_line(e)})") from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} ids, model only {cfg.vocab_size}")

    try:
        state = Transformer.fuse_state_dict(read_weights(path, raw, verify=verify))
    except RuntimeError as e:          # projections of inconsistent shapes cannot be concatenated
        raise CheckpointError(f"{path}: inconsistent projection shapes ({_one_line(e)})") from None
    try:
        model = Transformer(cfg)
    except Exception as e:
        raise CheckpointError(f"{path / CONFIG}: invalid model config ({_one_line(e)})") from None
    expected = {k: v for k, v in model.state_dict().items()
                if not (cfg.tie_embeddings and k == "output.weight")}
    missing = sorted(expected.keys() - state.keys())
    extra = sorted(state.keys() - expected.keys())
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]} ({len(missing)} missing)")
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]} ({len(extra)} extra)")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(state[k].shape)}, "
                                  f"config implies {tuple(v.shape)}")
    td = raw.get("torch_dtype")            # any JSON value: a list or dict is not a dtype name (nor hashable)
    stored = _DTYPES[td] if isinstance(td, str) and td in _DTYPES else None
    dtype = parse_dtype(dtype) or (torch.float32 if str(device) == "cpu" else stored or torch.float32)
    with torch.no_grad():
        for k, p in model.state_dict().items():
            if k in state:
                p.copy_(state[k])                          # casts in place: no full-size temporary
    model = model.to(device=device, dtype=dtype).eval()
    return Checkpoint(model=model, tokenizer=tokenizer, config=cfg, meta=raw.get("meta", {}))
