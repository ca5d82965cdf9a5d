"""Helpers for the linguistic tests: plan rows looked up by word."""
from __future__ import annotations

from asa_runtime.config import PlanConfig
from asa_runtime.linguistics.pieces import word_pieces
from asa_runtime.linguistics.planner import Planner


class Analysis:
    """A text planned with no window / sinks, so every key beyond the word itself is a bond."""

    def __init__(self, text: str, mode: str = "full", k: int = 256, **kw):
        self.pieces = word_pieces(text)
        cfg = PlanConfig(mode=mode, k=k, window=0, sinks=0, **kw)
        self.inc = Planner(cfg).incremental()
        self.rows = [[int(x) for x in self.inc.extend(p) if x >= 0] for p in self.pieces]
        self.words = [p.strip() for p in self.pieces]

    def pos(self, word: str, nth: int = 0) -> int:
        hits = [i for i, w in enumerate(self.words) if w == word]
        assert len(hits) > nth, f"{word!r} not in {self.words}"
        return hits[nth]

    def bonds(self, query: str, key: str, qn: int = 0, kn: int = 0) -> bool:
        q, k = self.pos(query, qn), self.pos(key, kn)
        assert k < q, "key must come first"
        return k in self.rows[q]

    def upos(self, word: str, nth: int = 0) -> str:
        return self.inc.st.features(self.pos(word, nth)).upos_name
