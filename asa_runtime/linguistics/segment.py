"""Causal word segmentation and sentence boundaries over subword token pieces.

The analyzer sees the model's tokens one at a time (their decoded text, e.g. " the", "'s", "\n\n").
Every decision here is made when a token arrives and never revised, so the segmentation of a prefix is
a prefix of the segmentation: the property the AttentionPlan's causality rests on.

- A token starts a new word when it begins with whitespace, when it is punctuation after a word
  character (or a word character after punctuation), or when it is an apostrophe clitic ('s, 't, ...).
  Otherwise it continues the current word (subword pieces of one word).
- A word that ends a sentence ('.', '!', '?', optionally followed by closing quotes) sets a pending
  boundary; the next word opens a new sentence unless it is a closing quote/bracket or starts lowercase,
  or the terminator followed a known abbreviation ("Mr."). A newline always ends the sentence.
We do not use spaCy's tokenizer here: its prefix/suffix rules look at a whole whitespace-delimited chunk,
which would let later characters change earlier words (not causal at token granularity).

Cost: a word keeps only its first MAX_WORD_CHARS characters (what the tagger and lexicon read) plus the two
facts its end decides (the last character that is not a closer, and where it is), so a run without a word
break of any length costs O(1) per token, not O(length) (docs/linguistics.md: no real word comes near it).
"""
from __future__ import annotations

WORD, PUNCT, SPACE = 0, 1, 2
_NO, _SOFT, _HARD = 0, 1, 2         # pending sentence boundary: none; after a terminator; after a newline

_APOSTROPHES = "'\u2019"
_CLOSERS = set("\"'\u2019\u201d)]}\u00bb")
_CLOSER_CHARS = "".join(sorted(_CLOSERS))
_TERMINATORS = set(".!?")
_CLITICS = {"s", "t", "re", "ve", "ll", "d", "m"}
# Abbreviations after which '.' does not end a sentence (common English titles and short forms).
ABBREVIATIONS = frozenset("""mr mrs ms messrs dr st jr sr prof gen col capt lt sgt rev hon gov sen rep
vs etc e.g i.e cf viz al no nos vol vols ch chap fig p pp ed eds approx dept est inc ltd co corp
jan feb mar apr jun jul aug sep sept oct nov dec mt ft u.s u.k a.m p.m""".split())


# Characters of a word the analyzer keeps (and tags). The longest word the segmenter finds in the project's
# text (bench/fuzz/word_lengths.py) is 20 characters in prose and Wikipedia, 78 in UD EWT web text (a line of
# dashes): no real word is cut.
MAX_WORD_CHARS = 256


def _is_wordchar(c: str) -> bool:
    return c.isalnum()


class Segmenter:
    """Incremental segmenter. `push(piece)` returns (word_index, starts_new_word, kind, sentence_index)."""

    __slots__ = ("word", "word_text", "word_kind", "sent", "_pending", "_prev_word_lower", "_n", "_core_end",
                 "_core_last")

    def __init__(self):
        self.word = -1            # index of the current word
        self.word_text = ""       # text of the current word so far (no surrounding whitespace), at most
        #                           MAX_WORD_CHARS characters (its head)
        self._n = 0               # length of the whole word so far
        self._core_end = 0        # ... up to and including its last character that is not a closer (0: none)
        self._core_last = ""      # ... that character
        self.word_kind = SPACE
        self.sent = 0
        self._pending = _NO       # a sentence boundary waits for the next word
        self._prev_word_lower = ""

    def _close_word(self):
        """Called when the current word is complete (a new word starts)."""
        if self.word_kind == PUNCT:
            # the whole word with its closing quotes stripped ends in a terminator (and is not "." after "Mr")
            if self._core_end and self._core_last in _TERMINATORS:
                if not (self._core_end == 1 and self._core_last == "." and self._prev_word_lower in ABBREVIATIONS):
                    self._pending = max(self._pending, _SOFT)    # never weakens a newline's boundary
        if self.word_kind != SPACE:
            self._prev_word_lower = self.word_text.lower()

    def _open_word(self, text: str, kind: int):
        if self.word >= 0:
            self._close_word()
        self.word += 1
        if self._pending and kind != SPACE:
            first = text[:1]
            if first in _CLOSERS and kind == PUNCT:
                pass                                   # closing quote stays with its sentence
            elif first.islower() and self._pending == _SOFT:
                self._pending = _NO                    # "etc. and so on": no new sentence
            else:
                self.sent += 1
                self._pending = _NO
        self.word_text = text[:MAX_WORD_CHARS]
        self.word_kind = kind
        self._n = self._core_end = 0
        self._core_last = ""
        self._grow(text)

    def _grow(self, text: str):
        """Account for `text` appended to the current word (its head was extended by the caller)."""
        if self.word_kind == PUNCT:                    # only punctuation words can end a sentence
            core = text.rstrip(_CLOSER_CHARS)
            if core:
                self._core_end, self._core_last = self._n + len(core), core[-1]
        self._n += len(text)

    def push(self, piece: str):
        if not piece:
            piece = "\ufffd"                           # an empty decode still is one token
        c0 = piece[0]
        if c0.isspace():
            text = piece.lstrip()
            if "\n" in piece[: len(piece) - len(text)]:
                self._pending = _HARD                  # newline: always a boundary before the next word
            if not text:
                self._open_word("", SPACE)
                return self.word, True, SPACE, self.sent
            kind = WORD if _is_wordchar(text[0]) else PUNCT
            self._open_word(text, kind)
            return self.word, True, kind, self.sent
        kind = WORD if _is_wordchar(c0) else PUNCT
        cur = self.word_kind
        clitic = c0 in _APOSTROPHES and piece[1:].lower() in _CLITICS and cur == WORD
        if clitic:
            kind = WORD                                # 's, n't ... are words of their own (as in UD)
        elif self.word >= 0 and kind == cur and cur != SPACE:
            room = MAX_WORD_CHARS - len(self.word_text)  # subword continuation
            if room > 0:
                self.word_text += piece[:room]
            self._grow(piece)
            return self.word, False, kind, self.sent
        self._open_word(piece, kind)
        return self.word, True, kind, self.sent

    # --- state for prompt caches -------------------------------------------------------------
    def state(self) -> dict:
        return {"word": self.word, "word_text": self.word_text, "word_kind": self.word_kind, "sent": self.sent,
                "pending": self._pending, "prev": self._prev_word_lower, "n": self._n, "core_end": self._core_end,
                "core_last": self._core_last}

    @classmethod
    def from_state(cls, d: dict) -> "Segmenter":
        s = cls()
        s.word, s.word_text, s.word_kind, s.sent = d["word"], d["word_text"], d["word_kind"], d["sent"]
        s._pending, s._prev_word_lower = int(d["pending"]), d["prev"]
        if "n" in d:
            s._n, s._core_end, s._core_last = int(d["n"]), int(d["core_end"]), str(d["core_last"])
        else:                                          # a state from before the cap: word_text is whole
            s.word_text = ""
            s._n = s._core_end = 0
            s._core_last = ""
            text = d["word_text"]
            s.word_text = text[:MAX_WORD_CHARS]
            s._grow(text)
        return s
