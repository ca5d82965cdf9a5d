"""Sessions reused across requests, so turn N of a conversation does not prefill turns 1..N-1 again.

Chat turns are rendered with a transcript template (asa-small is a base model that continues text, not an
assistant: docs/chat_app.md says how the template was chosen). A request takes the idle Session whose
tokens share the longest prefix with its prompt; Session.prepare then rewinds to its last mark inside that
prefix and computes only the rest. Idle sessions are kept in LRU order up to a bound (each holds a KV cache).
Only the model worker thread touches this pool.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from asa_runtime.session import Session

@dataclass(frozen=True)
class Template:
    """How chat turns become text the base model continues. A user turn is `user.format(text)`, a model
    turn `model_open + text + model_close`; the prompt ends with `model_open`, and the reply ends at any
    of `stops` (where the model starts the next turn on its own)."""
    name: str
    user: str
    model_open: str
    model_close: str
    stops: tuple[str, ...]
    user_name: str = "You"
    model_name: str = "Bob"
    sep: str = ""                  # between model_open and a past reply (" " after a label: BPE's leading space)

    def segments(self, messages: list[dict]) -> list[str]:
        """The transcript in pieces: system texts first (a scene setting), then the turns, ending where
        the model's turn starts. The server tokenizes piece by piece, so a conversation's next prompt
        extends the previous one token for token (its cache is reused; see SessionPool)."""
        system = "\n".join(m["content"].strip() for m in messages
                           if m["role"] in ("system", "developer") and m["content"].strip())
        out = [f"{system}\n\n"] if system else []
        for m in messages:
            if m["role"] == "user":
                out.append(self.user.format(m["content"].strip()))
            elif m["role"] == "assistant":
                out += [self.model_open, f"{self.sep}{m['content'].strip()}{self.model_close}"]
        out.append(self.model_open)
        return out

    def render(self, messages: list[dict]) -> str:
        return "".join(self.segments(messages))

    def encode(self, tokenizer, messages: list[dict]) -> list[int]:
        return [i for seg in self.segments(messages) for i in tokenizer.encode(seg)]


# Measured on asa-small by bench/serve/chat_templates.py (results in bench/serve/results/, docs/chat_app.md).
TEMPLATES = {t.name: t for t in (
    Template("user-assistant", "User: {}\n", "Assistant:", "\n", ("\nUser:", "\nAssistant:", "\n\n"),
             "User", "Assistant", " "),
    Template("play", "ALICE. {}\n", "BOB.", "\n", ("\nALICE.", "\nBOB.", "\n\n"), "Alice", "Bob", " "),
    Template("letters", "My dear Bob,\n{}\nYours, Alice.\n\n", "My dear Alice,\n", "\nYours, Bob.\n\n",
             ("\nYours", "\nMy dear", "\n\n"), "Alice", "Bob"),
    Template("narration", "\"{}\" said Alice.\n", "\"", "\" said Bob.\n", ("\"",), "Alice", "Bob"),
)}
DEFAULT_TEMPLATE = "narration"


def render_chat(messages: list[dict], template: str = DEFAULT_TEMPLATE) -> str:
    return TEMPLATES[template].render(messages)


def chat_stops(template: str = DEFAULT_TEMPLATE) -> list[str]:
    return list(TEMPLATES[template].stops)


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SessionPool:
    """Idle Sessions by recency; `acquire(ids)` hands out the one sharing the longest prefix with ids."""

    def __init__(self, lm, ctx_size: int, max_kv_size: int | None, prefill_chunk: int, keep: int):
        self.lm, self.ctx_size, self.max_kv_size, self.prefill_chunk = lm, ctx_size, max_kv_size, prefill_chunk
        self.keep = max(0, keep)
        self.idle: OrderedDict[int, Session] = OrderedDict()     # id(session) -> session, oldest first
        self.created = 0

    def acquire(self, ids) -> Session:
        best, best_n = None, 0
        for key, s in self.idle.items():
            n = common_prefix(s.tokens, ids)
            if n > best_n:
                best, best_n = key, n
        if best is not None:
            return self.idle.pop(best)
        if self.idle and len(self.idle) >= self.keep:            # reuse the oldest one's memory
            _, s = self.idle.popitem(last=False)
            s.reset()
            return s
        self.created += 1
        return Session(self.lm, ctx_size=self.ctx_size, max_kv_size=self.max_kv_size,
                       prefill_chunk=self.prefill_chunk)

    def release(self, s: Session, keep: bool = True) -> None:
        """Back to the pool (most recent); a session in an unknown state (keep=False) is reset first."""
        if not keep:
            s.reset()
        if self.keep == 0:
            return
        self.idle[id(s)] = s
        while len(self.idle) > self.keep:
            self.idle.popitem(last=False)
