"""Model registry: a short name ("asa-small") resolves to a model folder shipped inside the package
(asa_runtime/models/<name>/); any folder holding a config.json works too."""
from __future__ import annotations

import os
from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
# Names the project ships (or will ship); a name listed here but absent on disk gets a clear message.
KNOWN = {"asa-small": "the ASA small model (d 384, 8 layers), trained by training/ and shipped in the package"}


from .errors import RegistryError


def available() -> list[str]:
    """Names of the models present in the package (folders with a config.json)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A registry name or a model folder -> the folder's Path. Raises RegistryError otherwise."""
    s = str(name_or_path).strip()
    if not s:
        raise RegistryError("empty model name")
    have = available()
    listing = ", ".join(have) if have else "none installed"
    if s in have:
        return MODELS_DIR / s
    p = Path(s).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise RegistryError(f"{p} is not a model folder: config.json is missing")
        return p
    if p.exists():
        if p.name in ("config.json", "model.safetensors"):
            return resolve(p.parent)
        raise RegistryError(f"{p} is a file, not a model folder (give the folder that holds config.json)")
    if s in KNOWN:
        raise RegistryError(f"model {s!r} is not installed in this package yet ({KNOWN[s]}); "
                            f"available models: {listing}; or pass a model folder path")
    raise RegistryError(f"unknown model {s!r}: not a registry name nor an existing folder; "
                        f"available models: {listing}")
