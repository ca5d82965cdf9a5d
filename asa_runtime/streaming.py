"""Text out of a token stream: incremental detokenization and stop strings (shared by the CLI, the chat
and the server)."""
from __future__ import annotations

from collections.abc import Sequence


class StreamingDetokenizer:
    """Text of a growing token list, emitted as new segments. Holds back an incomplete UTF-8 character
    (a trailing U+FFFD) until its bytes arrive. Decoding restarts at the last clean boundary, so a step
    costs O(tokens since then), not O(all tokens) (byte-level BPE decodes by concatenation)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.pending: list[int] = []

    def add(self, token: int) -> str:
        self.pending.append(int(token))
        text = self.tok.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 8:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tok.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


class StopMatcher:
    """Finds stop strings in streamed text; holds back a tail that could still become a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stopped)."""
        self.buf += text
        if not self.stops:
            out, self.buf = self.buf, ""
            return out, False
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        hold = 0                                    # longest tail that is a proper prefix of a stop string
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), hold, -1):
                if self.buf.endswith(s[:k]):
                    hold = k
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(self.buf) - hold:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out
