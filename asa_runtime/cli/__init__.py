"""`asa-run`: a thin click shell over the library API. Each subcommand lives in its own module and
registers itself on `main`; bad input raises click.ClickException (one line, exit code 1)."""
from __future__ import annotations

import importlib

import click

from asa_runtime import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="asa-run")
def main():
    """ASA runtime: linguistically planned sparse attention for local long-context generation."""


# Subcommand modules (each defines commands with @main.command()).
for _mod in ("analyze", "generate", "chat", "export", "serve", "bench"):
    try:
        importlib.import_module(f"asa_runtime.cli.{_mod}")
    except ModuleNotFoundError as e:  # a subcommand not built yet must not break the others
        if e.name != f"asa_runtime.cli.{_mod}":
            raise
