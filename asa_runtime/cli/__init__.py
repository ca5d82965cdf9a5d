"""`asa-run`: a thin click shell over the library API. Each subcommand lives in its own module and
registers itself on `main`; bad input raises click.ClickException (one line, exit code 1)."""
from __future__ import annotations

import importlib

import click

from asa_runtime import __version__


class OneLineCommand(click.Command):
    """A click command whose usage errors print as one `Error: ...` line (exit code 2)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            e.ctx = None                       # no "Usage: ..." banner and hint: one line only
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:          # raised by the command body (e.g. prompt and file both given)
            e.ctx = None
            raise


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="asa-run")
def main():
    """ASA runtime: linguistically planned sparse attention for local long-context generation."""


main.command_class = OneLineCommand          # every subcommand: usage errors as one line


# Subcommand modules (each defines commands with @main.command()).
SUBCOMMANDS = ("analyze", "generate", "chat", "perplexity", "export", "serve", "bench")
for _mod in SUBCOMMANDS:
    importlib.import_module(f"asa_runtime.cli.{_mod}")
