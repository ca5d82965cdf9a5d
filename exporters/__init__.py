"""Exporters: the runtime's weights in other runtimes' formats (DESIGN.md "exporters/").

Each format is one module (or package) exposing
    export(model_path: Path, out: Path, *, dtype: str | None, progress: bool) -> Path
and registered by name in asa_runtime/cli/export.py. Shared helpers (checkpoint loading with one-line
errors, atomic output, progress bars) are in exporters/common.py.
"""
