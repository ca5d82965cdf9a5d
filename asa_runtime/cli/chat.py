"""`asa-run chat`: a terminal multi-turn chat over one engine session.

The conversation is plain text in a fixed template; each turn tokenizes the whole conversation and the
session reuses the cached prefix (Session.prepare rewinds to the end of the previous prompt), so a turn
costs its own tokens, not the history's. When the history no longer fits the context (with room for a
reply), the oldest turns are dropped. Reads lines from stdin, so it can be driven by a pipe or a test.
Commands: /reset (forget the conversation), /exit or /quit, /help.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import click

from . import main
from .generate import OneLineCommand, load_model, model_options, one_line, sampler_kwargs, user_errors

USER, ASSISTANT = "User:", "Assistant:"
STOPS = ("\n" + USER, "\n" + ASSISTANT, "\nUser :")
HELP = "commands: /reset clears the conversation, /exit quits, /help shows this"


@dataclass
class Conversation:
    """Chat history in the template `[system\\n\\n]User: ...\\nAssistant: ...\\n`."""
    system: str = ""
    turns: list[tuple[str, str]] = field(default_factory=list)     # (user, assistant)

    def render(self, user: str) -> str:
        head = f"{self.system.strip()}\n\n" if self.system.strip() else ""
        past = "".join(f"{USER} {u}\n{ASSISTANT} {a}\n" for u, a in self.turns)
        return f"{head}{past}{USER} {user}\n{ASSISTANT}"

    def fit(self, tokenizer, user: str, budget: int) -> list[int] | None:
        """Token ids of the prompt for `user`, dropping the oldest turns until it fits `budget` tokens
        (None if even the message alone does not fit)."""
        while True:
            ids = tokenizer.encode(self.render(user))
            if len(ids) <= budget:
                return ids
            if not self.turns:
                return None
            self.turns.pop(0)


class Chat:
    """The chat loop's engine side, usable without a terminal (apps can drive it too)."""

    def __init__(self, lm, max_tokens=256, ctx_size=None, max_kv_size=None, prefill_chunk=512, system="",
                 **sampler_kw):
        from asa_runtime.generate import Session
        from asa_runtime.sampling import Sampler, SamplerConfig

        self.lm = lm
        self.max_tokens = max_tokens
        self.session = Session(lm, ctx_size=ctx_size, max_kv_size=max_kv_size, prefill_chunk=prefill_chunk)
        self.sampler = Sampler(SamplerConfig(**sampler_kw))
        self.conv = Conversation(system=system)
        self.last = None

    def reset(self) -> None:
        self.conv.turns.clear()
        self.session.reset()

    def reply(self, user: str):
        """Yields text segments of the reply and records the turn."""
        from asa_runtime.generate import GenerationError, stream_generate

        ctx = self.session.ctx_size
        max_new = min(self.max_tokens, ctx // 2)
        ids = self.conv.fit(self.lm.tokenizer, user, ctx - max_new)
        if ids is None:
            raise GenerationError(f"message too long for the context ({ctx} tokens)")
        out = []
        for r in stream_generate(self.lm, ids, max_new, sampler=self.sampler, stop=STOPS,
                                 session=self.session):
            out.append(r.text)
            self.last = r
            yield r.text
        self.conv.turns.append((user, "".join(out).strip()))


@main.command("chat", cls=OneLineCommand)
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Longest reply in tokens.")
@click.option("--system", default="", help="Text placed before the conversation.")
@model_options
def chat_cmd(max_tokens, system, **o):
    """Chat in the terminal (streaming). Type /reset to start over, /exit to quit."""
    from asa_runtime.generate import format_stats

    try:
        lm = load_model(o)
        chat = Chat(lm, max_tokens=max_tokens, ctx_size=o["ctx_size"] or None,
                    max_kv_size=o["max_kv_size"] or None, prefill_chunk=o["prefill_chunk"], system=system,
                    **sampler_kwargs(o))
    except click.ClickException:
        raise
    except user_errors() as e:
        raise click.ClickException(one_line(e)) from None
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"asa-run chat ({o['model']}); {HELP}", err=True)
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:                                   # EOF
            break
        msg = line.strip()
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
        try:
            for seg in chat.reply(msg):
                click.echo(seg, nl=False)
                sys.stdout.flush()
            click.echo()
        except user_errors() as e:
            click.echo(f"[error: {one_line(e)}]")
            continue
        if o["verbose"] and chat.last is not None:
            click.echo(format_stats(chat.last), err=True)
