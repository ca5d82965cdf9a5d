"""Multi-turn chat over one Session: the terminal chat (`asa-run chat`) and the chat app drive this same
object. asa-small is a base model trained on fiction, not an assistant: the conversation is plain text in
a transcript template the model continues, and each turn re-tokenizes the whole conversation while the
session reuses its cached prefix (Session.prepare rewinds to the end of the previous prompt), so a turn
costs its own tokens, not the history's. When the history no longer fits the context (with room for a
reply), the oldest turns are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import GenerationError, require_unicode
from .generate import stream_generate
from .sampling import Sampler
from .session import Session

USER, ASSISTANT = "User:", "Assistant:"
STOPS = ("\n" + USER, "\n" + ASSISTANT, "\nUser :")


@dataclass
class Conversation:
    """Chat history in the template `[system\\n\\n]User: ...\\nAssistant: ...\\n`."""
    system: str = ""
    turns: list[tuple[str, str]] = field(default_factory=list)     # (user, assistant)
    user: str = USER
    assistant: str = ASSISTANT

    def __post_init__(self):
        for name in ("system", "user", "assistant"):
            if not isinstance(getattr(self, name), str):
                raise GenerationError(f"Conversation {name} must be text, got {type(getattr(self, name)).__name__}")
        if not self.user.strip() or not self.assistant.strip():
            raise GenerationError("Conversation user and assistant labels must not be blank")
        try:
            self.turns = [(u, a) for u, a in self.turns]
        except (TypeError, ValueError):
            raise GenerationError("Conversation turns must be a list of (user, assistant) text pairs") from None
        if not all(isinstance(u, str) and isinstance(a, str) for u, a in self.turns):
            raise GenerationError("Conversation turns must be a list of (user, assistant) text pairs")

    @property
    def stops(self) -> tuple[str, ...]:
        return ("\n" + self.user, "\n" + self.assistant, "\n" + self.user.rstrip(":") + " :")

    def render(self, user: str) -> str:
        head = f"{self.system.strip()}\n\n" if self.system.strip() else ""
        past = "".join(f"{self.user} {u}\n{self.assistant} {a}\n" for u, a in self.turns)
        return f"{head}{past}{self.user} {user}\n{self.assistant}"

    def fit(self, tokenizer, user: str, budget: int) -> list[int] | None:
        """Token ids of the prompt for `user`, dropping the oldest turns until it fits `budget` tokens
        (None if even the message alone does not fit)."""
        while True:
            ids = tokenizer.encode(require_unicode(self.render(user), "the conversation"))
            if len(ids) <= budget:
                return ids
            if not self.turns:
                return None
            self.turns.pop(0)


class Chat:
    """One conversation: its Session, sampler and history. `reply(text)` streams the answer."""

    def __init__(self, lm, max_tokens=256, ctx_size=None, max_kv_size=None,
                 prefill_chunk=None, system="", conversation: Conversation | None = None,
                 **sampler_kw):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise GenerationError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if conversation is not None and not isinstance(conversation, Conversation):
            raise GenerationError(f"conversation must be a Conversation, got {type(conversation).__name__}")
        self.lm = lm
        self.max_tokens = max_tokens
        self.session = Session(lm, ctx_size=ctx_size, max_kv_size=max_kv_size, prefill_chunk=prefill_chunk)
        self.sampler = Sampler(**sampler_kw)            # unknown or out-of-range options: GenerationError
        self.conv = conversation if conversation is not None else Conversation(system=system)
        self.last = None

    def reset(self) -> None:
        self.conv.turns.clear()
        self.session.reset()

    def reply(self, user: str):
        """Yields text segments of the reply and records the turn."""
        if not isinstance(user, str):
            raise GenerationError(f"the message must be text, got {type(user).__name__}")
        require_unicode(user, "the message")
        ctx = self.session.ctx_size
        max_new = min(self.max_tokens, ctx // 2)
        ids = self.conv.fit(self.lm.tokenizer, user, ctx - max_new)
        if ids is None:
            raise GenerationError(f"message too long for the context ({ctx} tokens)")
        out = []
        try:
            for r in stream_generate(self.lm, ids, max_new, sampler=self.sampler, stop=self.conv.stops,
                                     session=self.session):
                out.append(r.text)
                self.last = r
                yield r.text
        finally:      # a reply stopped early (Ctrl-C, a closed client) is kept as far as it got
            self.conv.turns.append((user, "".join(out).strip()))
