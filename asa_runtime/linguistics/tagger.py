"""Causal UPOS tagger: a greedy averaged perceptron that looks only left.

The tag of a word depends on the word itself (possibly an unfinished prefix), the previous two words of the
sentence and their tags: never on anything to its right, so the analyzer's plan stays causal. The model is
Honnibal's averaged perceptron (as in NLTK's PerceptronTagger) with the right-context features removed and
more left-context ones added, plus a tag dictionary of frequent unambiguous words that skips the perceptron.
Trained by `python -m training.build_tagger` (docs/tagger.md); depends only on numpy and the stdlib.

Speed: scores split into parts that depend on the word alone, on each previous word alone, on the two tags
alone, and a few pairs. The single-word parts are cached per word, the tag part is a dense table, so a call
costs a few dict lookups and small vector adds. `features()` is the plain reference the trainer uses;
`CausalTagger.tag` must score exactly the same feature set (tests/test_tagger.py checks it).
"""
from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import numpy as np

from asa_runtime.linguistics.features import N_UPOS, UPOS

ARTIFACT = Path(__file__).with_name("artifacts") / "tagger.npz"
FORMAT_VERSION = 1
_CACHE_MAX = 50_000  # per-word caches (~0.3 KB an entry) are dropped wholesale past this many entries

# Typographic quotes -> the ASCII ones UD EWT uses.
_NORM = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201b": "'", "\u2032": "'", "`": "'",
                       "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"'})


def normalize(word: str) -> str:
    w = word.translate(_NORM)
    return '"' if w in ("''", "``") else w  # PTB-style quote pairs


def shape(w: str) -> str:
    """Word shape with runs capped at 2: 'Dog'->'Xxx', 'USA'->'XX', '3.5'->'d.d', 'e-mail'->'x-xx'."""
    out = []
    last, run = "", 0
    for ch in w[:16]:
        if ch.isupper():
            c = "X"
        elif ch.islower():
            c = "x"
        elif ch.isdigit():
            c = "d"
        elif ch.isalpha():
            c = "a"  # uncased scripts
        elif ch < "\x80":
            c = ch  # ASCII punctuation / symbols keep their identity
        else:
            c = unicodedata.category(ch)  # e.g. 'So' emoji, 'Pd' dash
        if c == last:
            run += 1
            if run > 2:
                continue
        else:
            last, run = c, 1
        out.append(c)
    return "".join(out)


# --- feature templates. Each group is a function of the inputs named; keep `features` in sync. -------------
# Tags enter as ints in [-1, N_UPOS); -1 = no word there (sentence start).

# `lex` maps a lowercased word to its corpus statistics, as feature values (see training/build_tagger.py):
# (fine distributional cluster, coarse cluster, capitalisation bucket). Words outside it get '?'.
_NOLEX = ("?", "?", "?")


def word_features(w: str, lex: dict) -> list[str]:
    """Current word alone (w normalized)."""
    lo = w.lower()
    c, k, cr = lex.get(lo, _NOLEX)
    f = ["b", "w " + lo, "s1 " + lo[-1:], "s2 " + lo[-2:], "s3 " + lo[-3:], "s4 " + lo[-4:],
         "p1 " + lo[:1], "p2 " + lo[:2], "p3 " + lo[:3], "h " + shape(w), "c " + c, "k " + k, "cr " + cr]
    if w != lo:
        f.append("W " + w)
    return f


def prev1_features(p: str | None, lex: dict) -> list[str]:
    if p is None:
        return ["v1 <s>"]
    lo = p.lower()
    return ["v1 " + lo, "v1s " + lo[-3:], "v1h " + shape(p), "v1c " + lex.get(lo, _NOLEX)[0]]


def prev2_features(p: str | None, lex: dict) -> list[str]:
    if p is None:
        return ["v2 <s>"]
    lo = p.lower()
    return ["v2 " + lo, "v2s " + lo[-3:], "v2c " + lex.get(lo, _NOLEX)[1]]


def tag_features(t1: int, t2: int) -> list[str]:
    return [f"t1 {t1}", f"t2 {t2}", f"t12 {t1} {t2}"]


def word_pair_features(lo: str, l1: str, l2: str) -> list[str]:
    """Current word crossed with the previous words (lowercased, '<s>' before the sentence start)."""
    return [f"v1w {l1} {lo}"]


def tag_pair_features(lo: str, sh: str, l1: str, c: str, t1: int, t2: int) -> list[str]:
    """Current word crossed with the previous tags (sh: shape, c: fine cluster of the current word)."""
    return [f"t1w {t1} {lo}", f"t1s {t1} {lo[-3:]}", f"t1h {t1} {sh}", f"t12s {t1} {t2} {lo[-2:]}",
            f"v1t {l1} {t1}", f"t1c {t1} {c}"]


def features(word: str, prev1: str | None, prev2: str | None, tag1: int, tag2: int, lex: dict) -> list[str]:
    """Reference feature list (training and tests). Words are normalized here."""
    w = normalize(word)
    p1 = None if prev1 is None else normalize(prev1)
    p2 = None if prev2 is None else normalize(prev2)
    lo = w.lower()
    l1 = "<s>" if p1 is None else p1.lower()
    l2 = "<s>" if p2 is None else p2.lower()
    return (word_features(w, lex) + prev1_features(p1, lex) + prev2_features(p2, lex)
            + word_pair_features(lo, l1, l2) + tag_features(tag1, tag2)
            + tag_pair_features(lo, shape(w), l1, lex.get(lo, _NOLEX)[0], tag1, tag2))


# --- artifact I/O --------------------------------------------------------------------------------------------

def _pack(strings: list[str]) -> np.ndarray:
    return np.frombuffer("\n".join(strings).encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _unpack(a: np.ndarray) -> list[str]:
    s = a.tobytes().decode("utf-8", "surrogatepass")
    return s.split("\n") if s else []


def save_artifact(path, feats: list[str], weights: np.ndarray, tagdict: dict[str, int],
                  lex: dict[str, tuple[int, int, int]], meta: dict) -> None:
    """weights: (len(feats), N_UPOS), stored as float16; lex: lowercased word -> (fine, coarse, cap) ints.
    One compressed .npz of plain arrays (no pickles)."""
    assert weights.shape == (len(feats), N_UPOS)
    assert all("\n" not in f for f in feats) and all("\n" not in w for w in tagdict) and all("\n" not in w for w in lex)
    words = sorted(tagdict)
    lw = sorted(lex)
    lv = np.array([lex[w] for w in lw], np.int32).reshape(-1, 3)
    meta = dict(meta, format=FORMAT_VERSION, upos=list(UPOS))
    np.savez_compressed(path, features=_pack(feats), weights=weights.astype(np.float16),
                        tagdict_words=_pack(words), tagdict_tags=np.array([tagdict[w] for w in words], np.int8),
                        lex_words=_pack(lw), lex_values=lv.astype(np.uint16), meta=_pack([json.dumps(meta)]))


def lex_strings(lex: dict[str, tuple[int, int, int]]) -> dict[str, tuple[str, str, str]]:
    """Integer lexicon values -> the feature-value strings the templates use (one tuple per distinct value)."""
    memo: dict[tuple, tuple[str, str, str]] = {}
    out = {}
    for w, v in lex.items():
        t = memo.get(v)
        if t is None:
            t = memo[v] = (str(v[0]), str(v[1]), str(v[2]))
        out[w] = t
    return out


def _tag_or_none(t: int) -> int:
    """Tag ids outside [-1, N_UPOS) count as absent (-1)."""
    return t if -1 <= t < N_UPOS else -1


class CausalTagger:
    def __init__(self, feats: list[str], weights: np.ndarray, tagdict: dict[str, int],
                 lex: dict[str, tuple[str, str, str]], meta: dict | None = None):
        self.meta = meta or {}
        self.lex = lex
        w = np.ascontiguousarray(weights, dtype=np.float32)  # (F, N_UPOS)
        self._w = dict(zip(feats, w))  # feature -> its weight row (a view)
        self.tagdict = tagdict
        self._zero = np.zeros(N_UPOS, np.float32)
        # Dense table of the pure tag features, indexed [t1 + 1, t2 + 1].
        T = np.zeros((N_UPOS + 1, N_UPOS + 1, N_UPOS), np.float32)
        for a in range(-1, N_UPOS):
            for b in range(-1, N_UPOS):
                T[a + 1, b + 1] = self._sum(tag_features(a, b))
        self._tags = T
        # String prefixes of the pair templates, per t1 (saves int formatting per call).
        r = range(-1, N_UPOS)
        self._pt1w = [f"t1w {t} " for t in r]
        self._pt1s = [f"t1s {t} " for t in r]
        self._pt1h = [f"t1h {t} " for t in r]
        self._pt1c = [f"t1c {t} " for t in r]
        self._pt12 = [[f"t12s {a} {b} " for b in r] for a in r]
        self._pv1t = [f" {t}" for t in r]
        self._cur: dict[str, tuple] = {}
        self._p1: dict[str, tuple] = {}
        self._p2: dict[str, np.ndarray] = {}
        self._p1_none = (self._sum(prev1_features(None, lex)), "<s>")
        self._p2_none = self._sum(prev2_features(None, lex))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> CausalTagger:
        with np.load(ARTIFACT if path is None else path, allow_pickle=False) as z:
            meta = json.loads(_unpack(z["meta"])[0])
            if meta.get("format") != FORMAT_VERSION or tuple(meta.get("upos", ())) != UPOS:
                raise ValueError(f"tagger artifact {path or ARTIFACT}: unsupported format or tag set")
            feats = _unpack(z["features"])
            tagdict = dict(zip(_unpack(z["tagdict_words"]), z["tagdict_tags"].tolist()))
            lex = dict(zip(_unpack(z["lex_words"]), map(tuple, z["lex_values"].tolist())))  # small ints
            return cls(feats, z["weights"], tagdict, lex_strings(lex), meta)

    def _sum(self, feats: list[str]) -> np.ndarray:
        s = self._zero.copy()
        get = self._w.get
        for f in feats:
            row = get(f)
            if row is not None:
                s += row
        return s

    # -- per-word caches (cleared wholesale when large)
    def _current(self, word: str) -> tuple:
        w = normalize(word)
        lo = w.lower()
        e = (self.tagdict.get(w, -1), self._sum(word_features(w, self.lex)), lo, lo[-3:], lo[-2:], shape(w),
             self.lex.get(lo, _NOLEX)[0])
        if len(self._cur) >= _CACHE_MAX:
            self._cur.clear()
        self._cur[word] = e
        return e

    def _prev1(self, word: str) -> tuple:
        p = normalize(word)
        e = (self._sum(prev1_features(p, self.lex)), p.lower())
        if len(self._p1) >= _CACHE_MAX:
            self._p1.clear()
        self._p1[word] = e
        return e

    def _prev2(self, word: str) -> np.ndarray:
        e = self._sum(prev2_features(normalize(word), self.lex))
        if len(self._p2) >= _CACHE_MAX:
            self._p2.clear()
        self._p2[word] = e
        return e

    def scores(self, word: str, prev1: str | None, prev2: str | None, tag1: int, tag2: int) -> np.ndarray:
        """Perceptron scores (N_UPOS,) of the features `features(...)` lists (the tag dictionary aside)."""
        tag1, tag2 = _tag_or_none(tag1), _tag_or_none(tag2)
        _, wv, lo, s3, s2, sh, c = self._cur.get(word) or self._current(word)
        if prev1 is None:
            p1v, l1 = self._p1_none
        else:
            p1v, l1 = self._p1.get(prev1) or self._prev1(prev1)
        p2v = self._p2_none if prev2 is None else (self._p2[prev2] if prev2 in self._p2 else self._prev2(prev2))
        a, b = tag1 + 1, tag2 + 1
        s = wv + p1v
        s += p2v
        s += self._tags[a, b]
        get = self._w.get
        for key in (self._pt1w[a] + lo, self._pt1s[a] + s3, self._pt1h[a] + sh, "v1w " + l1 + " " + lo,
                    self._pt12[a][b] + s2, "v1t " + l1 + self._pv1t[a], self._pt1c[a] + c):
            row = get(key)
            if row is not None:
                s += row
        return s

    def reference_scores(self, word: str, prev1: str | None, prev2: str | None, tag1: int, tag2: int) -> np.ndarray:
        """The same scores as `scores`, summed plainly over `features(...)` (slow; for tests and checks)."""
        tag1, tag2 = _tag_or_none(tag1), _tag_or_none(tag2)
        return self._sum(features(word, prev1, prev2, tag1, tag2, self.lex))

    def tag(self, word: str, prev1: str | None, prev2: str | None, tag1: int, tag2: int) -> int:
        cur = self._cur.get(word) or self._current(word)
        if cur[0] >= 0:
            return cur[0]
        return int(self.scores(word, prev1, prev2, tag1, tag2).argmax())

    def tag_sentence(self, words: list[str]) -> list[int]:
        """Greedy left to right with tag(): the analyzer's own loop, for evaluation."""
        out: list[int] = []
        p1 = p2 = None
        t1 = t2 = -1
        for w in words:
            t = self.tag(w, p1, p2, t1, t2)
            out.append(t)
            p2, p1, t2, t1 = p1, w, t1, t
        return out
