"""`asa-run chat`: a terminal multi-turn chat over asa_runtime.chat.Chat (the chat app drives the same
object). Reads lines from stdin, so it can be driven by a pipe or a test.
Commands: /reset (forget the conversation), /exit or /quit, /help.
"""
from __future__ import annotations

import sys

import click

from asa_runtime.chat import STOPS, Chat, Conversation  # noqa: F401  (re-exported for callers of the CLI)
from asa_runtime.errors import USER_ERRORS, GenerationError, one_line, require_unicode
from asa_runtime.generate import format_stats

from . import main
from .generate import OneLineCommand, load_model, model_options, sampler_kwargs

HELP = "commands: /reset clears the conversation, /exit quits, /help shows this"


@main.command("chat", cls=OneLineCommand)
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Longest reply in tokens.")
@click.option("--system", default="", help="Text placed before the conversation.")
@model_options
def chat_cmd(max_tokens, system, **o):
    """Chat in the terminal (streaming). Type /reset to start over, /exit to quit."""
    try:
        require_unicode(system, "--system")
        lm = load_model(o)
        chat = Chat(lm, max_tokens=max_tokens, ctx_size=o["ctx_size"] or None,
                    max_kv_size=o["max_kv_size"] or None, prefill_chunk=o["prefill_chunk"] or None, system=system,
                    **sampler_kwargs(o))
    except click.ClickException:
        raise
    except USER_ERRORS as e:
        raise click.ClickException(one_line(e)) from None
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"asa-run chat ({o['model']}); {HELP}", err=True)
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        try:
            raw = sys.stdin.buffer.readline()
        except KeyboardInterrupt:                      # Ctrl-C at the prompt: leave quietly
            click.echo(err=True)
            break
        if not raw:                                    # EOF
            break
        try:
            msg = require_unicode(raw.decode("utf-8"), "input").strip()
        except (UnicodeDecodeError, GenerationError) as e:
            where = f"byte {e.start}" if isinstance(e, UnicodeDecodeError) else one_line(e)
            click.echo(f"[skipped a line that is not UTF-8 text ({where})]")
            continue
        if not msg:
            continue
        if msg in ("/exit", "/quit"):
            break
        if msg == "/reset":
            chat.reset()
            click.echo("[conversation reset]")
            continue
        if msg == "/help":
            click.echo(HELP)
            continue
        if msg.startswith("/"):
            click.echo(f"[unknown command {msg.split()[0]}; {HELP}]")
            continue
        reply = chat.reply(msg)
        try:
            for seg in reply:
                click.echo(seg, nl=False)
                sys.stdout.flush()
            click.echo()
        except KeyboardInterrupt:                      # Ctrl-C: stop this reply, keep the conversation
            reply.close()
            click.echo("\n[stopped]")
            continue
        except USER_ERRORS as e:
            click.echo(f"[error: {one_line(e)}]")
            continue
        if o["verbose"] and chat.last is not None:
            click.echo(format_stats(chat.last), err=True)
