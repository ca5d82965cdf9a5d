"""The causal analyzer: token pieces -> words, sentences, clauses, UPOS and lexical features.

`Analyzer` holds the shipped models (tagger, lexicon); `AnalyzerState` consumes one token piece at a time.
Everything known about token i is computed when token i arrives, from tokens 0..i only; a word's
features are recomputed while its subword pieces arrive (the tagger sees the prefix so far) and are
final once the next word starts. Later rows read earlier words' final features.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .features import UPOS, UPOS_ID, agr_names, sem_names
from .rules import CLAUSE_OPENERS
from .segment import MAX_WORD_CHARS, PUNCT, SPACE, Segmenter

_PUNCT, _SYM, _X, _SCONJ = UPOS_ID["PUNCT"], UPOS_ID["SYM"], UPOS_ID["X"], UPOS_ID["SCONJ"]
_SYMBOL_CHARS = set("$%#&+=<>@^|~*/\\\u00a3\u20ac\u00a9\u00b0")
_QUOTE_MAP = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


@dataclass(frozen=True)
class TokenFeatures:
    """What the analyzer knows about one token when it arrives (for display and tests)."""
    i: int
    word: int
    word_text: str
    sentence: int
    clause: int
    upos: int
    sem: int
    agr: int
    subj_req: int
    obj_req: int

    @property
    def upos_name(self) -> str:
        return UPOS[self.upos]

    def feature_names(self) -> list[str]:
        names = sem_names(self.sem) + agr_names(self.agr)
        names += [f"SUBJ:{n}" for n in sem_names(self.subj_req)] + [f"OBJ:{n}" for n in sem_names(self.obj_req)]
        return names


class Analyzer:
    """Shipped tagger + lexicon. Stateless; `start()` returns the per-sequence state."""


    def __init__(self, tagger, lexicon):
        self.tagger = tagger
        self.lexicon = lexicon

    @classmethod
    def load(cls, artifacts_dir: str | Path | None = None) -> "Analyzer":
        from .lexicon import Lexicon
        from .tagger import CausalTagger

        d = Path(artifacts_dir) if artifacts_dir else None
        tagger = CausalTagger.load(_find(d, "tagger") if d else None)
        lexicon = Lexicon.load(_find(d, "lexicon") if d else None)
        return cls(tagger, lexicon)

    @classmethod
    def default(cls) -> "Analyzer":
        return _default_analyzer()

    def start(self) -> "AnalyzerState":
        return AnalyzerState(self)


@lru_cache(maxsize=1)
def _default_analyzer() -> Analyzer:
    return Analyzer.load(None)


def _find(d: Path, stem: str) -> Path:
    hits = sorted(p for p in d.iterdir() if p.name.startswith(stem + "."))
    if not hits:
        raise FileNotFoundError(f"no {stem} artifact in {d}")
    return hits[0]


class AnalyzerState:
    """Per-sequence causal state. Word-level arrays are plain lists (append-only, O(1) per token)."""

    def __init__(self, analyzer: Analyzer):
        self.tagger = analyzer.tagger
        self.lexicon = analyzer.lexicon
        self.seg = Segmenter()
        # per token
        self.tok_word: list[int] = []
        self.tok_upos: list[int] = []
        # per word (the current word's entries change until it is complete)
        self.w_start: list[int] = []      # first token
        self.w_text: list[str] = []       # normalised lower-case text (tagger/lexicon/rules input)
        self.w_kind: list[int] = []
        self.w_sent: list[int] = []
        self.w_sent_first: list[int] = []  # first word of its sentence
        self.w_clause: list[int] = []
        self.w_upos: list[int] = []
        self.w_sem: list[int] = []
        self.w_agr: list[int] = []
        self.w_subj: list[int] = []
        self.w_obj: list[int] = []
        # tagger context: last two complete non-space words of the current sentence (text, tag)
        self._ctx: list[tuple[str, int]] = []
        self._ctx_sent = -1
        self._clause_base = 0         # clause index the current word starts from (before its own opener)
        self._head_full = False       # the current word's kept head (MAX_WORD_CHARS) was full at the last push

    def __len__(self) -> int:
        return len(self.tok_word)

    def push(self, piece: str) -> int:
        """Consume one token piece; return the index of the word it belongs to."""
        seg = self.seg
        prev_word, prev_raw = seg.word, seg.word_text
        w, new, kind, sent = seg.push(piece)
        if new:
            if prev_word >= 0 and self.w_kind[prev_word] != SPACE:
                # the previous word is complete: it enters the tagger context of its sentence
                if self.w_sent[prev_word] != self._ctx_sent:
                    self._ctx, self._ctx_sent = [], self.w_sent[prev_word]
                self._ctx.append((prev_raw.translate(_QUOTE_MAP), self.w_upos[prev_word]))
                if len(self._ctx) > 2:
                    del self._ctx[0]
            first = not self.w_sent or self.w_sent[-1] != sent
            self.w_start.append(len(self.tok_word))
            self.w_kind.append(kind)
            self.w_sent.append(sent)
            self.w_sent_first.append(w if first else self.w_sent_first[-1])
            self.w_text.append("")
            # clause: a new sentence or a clause opener starts a new local domain
            self._clause_base = 0 if w == 0 else self.w_clause[-1] + first
            self.w_clause.append(0)
            self.w_upos.append(0)
            self.w_sem.append(0)
            self.w_agr.append(0)
            self.w_subj.append(0)
            self.w_obj.append(0)
        elif self._head_full:
            # a word past MAX_WORD_CHARS: its kept head and its context are unchanged, so is its analysis
            self.tok_word.append(w)
            self.tok_upos.append(self.w_upos[w])
            return w
        self._head_full = len(seg.word_text) >= MAX_WORD_CHARS
        text = seg.word_text.translate(_QUOTE_MAP)
        low = self.w_text[w] = text.lower()
        # --- tag the word (prefix so far) from the words before it --------------------------------
        if kind == SPACE:
            upos = _X
        elif kind == PUNCT:
            upos = _SYM if text[0] in _SYMBOL_CHARS else _PUNCT
        else:
            ctx = self._ctx if self._ctx_sent == sent else ()
            n = len(ctx)
            p1, t1 = ctx[-1] if n >= 1 else (None, -1)
            p2, t2 = ctx[-2] if n >= 2 else (None, -1)
            upos = self.tagger.tag(text, p1, p2, t1, t2)
            e = self.lexicon.lookup(text, upos)
            self.w_sem[w], self.w_agr[w], self.w_subj[w], self.w_obj[w] = e.sem, e.agr, e.subj_req, e.obj_req
        self.w_upos[w] = upos
        self.w_clause[w] = self._clause_base + (upos == _SCONJ or low in CLAUSE_OPENERS)
        self.tok_word.append(w)
        self.tok_upos.append(upos)
        return w

    def features(self, i: int) -> TokenFeatures:
        """Token i's UPOS as tagged when it arrived, with its word's lexical features as last known
        (final once the word is complete). For display and tests; the planner reads the arrays."""
        w = self.tok_word[i]
        return TokenFeatures(i, w, self.w_text[w], self.w_sent[w], self.w_clause[w], self.tok_upos[i],
                             self.w_sem[w], self.w_agr[w], self.w_subj[w], self.w_obj[w])
