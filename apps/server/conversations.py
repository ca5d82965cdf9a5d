"""Sessions reused across requests, so turn N of a conversation does not prefill turns 1..N-1 again.

Chat turns are rendered with a transcript template (asa-small is a base model that continues text, not an
assistant: docs/chat_app.md says how the template was chosen). A request takes the idle Session whose
tokens share the longest prefix with its prompt; Session.prepare then rewinds to its last mark inside that
prefix and computes only the rest. Idle sessions are kept in LRU order up to a bound (each holds a KV cache).
Only the model worker thread touches this pool.
"""
from __future__ import annotations

from collections import OrderedDict

from asa_runtime.session import Session

# The transcript template (measured in bench/serve/chat_templates.py; see docs/chat_app.md).
USER_LABEL, MODEL_LABEL = "ALICE:", "BOB:"


def render_chat(messages: list[dict], user: str = USER_LABEL, model: str = MODEL_LABEL) -> str:
    """system texts first (as a scene setting), then one line per turn, ending with the model's label.
    The same layout as asa_runtime.chat.Conversation.render, so the terminal chat and the app agree."""
    system = "\n".join(m["content"].strip() for m in messages if m["role"] in ("system", "developer")
                       and m["content"].strip())
    head = f"{system}\n\n" if system else ""
    lines = []
    for m in messages:
        if m["role"] == "user":
            lines.append(f"{user} {m['content'].strip()}\n")
        elif m["role"] == "assistant":
            lines.append(f"{model} {m['content'].strip()}\n")
    return f"{head}{''.join(lines)}{model}"


def chat_stops(user: str = USER_LABEL, model: str = MODEL_LABEL) -> list[str]:
    """A reply ends where the model starts the next turn (or a blank line: a scene break)."""
    return ["\n" + user, "\n" + model, "\n" + user.rstrip(":") + " :", "\n\n"]


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
