"""Train the causal UPOS tagger on UD English EWT and write its artifact.

    python -m training.build_tagger [--ewt DIR] [--out PATH] [--epochs N]

Greedy averaged perceptron (Collins 2002; Honnibal's / NLTK's PerceptronTagger loop: previous tags are the
model's own predictions during training, weights averaged lazily), over the left-only feature templates of
asa_runtime/linguistics/tagger.py, plus word clusters learned here from unlabeled prose. Trains on train;
epochs, pruning and the tag-dictionary thresholds were chosen on dev, nothing on test. Prints dev/test UPOS
accuracy of the artifact as written (float16, pruned), its size, load time and tagging speed. docs/tagger.md.
Data (../shared/data/SOURCES.md): UniversalDependencies/UD_English-EWT v2.16 (CC BY-SA 4.0); ELTeC-eng and
Standard Ebooks prose (public domain) for the clusters.
"""
from __future__ import annotations

import argparse
import json
import lzma
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from asa_runtime.linguistics import tagger as T
from asa_runtime.linguistics.features import N_UPOS, UPOS_ID

DEFAULT_EWT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ud_english_ewt"

Sentence = tuple[list[str], list[int]]


def read_conllu(path: Path) -> list[Sentence]:
    """Words and UPOS ids; multiword-token lines (3-4) and empty nodes (3.1) skipped."""
    opener = lzma.open if path.suffix == ".xz" else open
    sents, words, tags = [], [], []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if words:
                    sents.append((words, tags))
                words, tags = [], []
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if not cols[0].isdigit():
                continue
            words.append(cols[1])
            tags.append(UPOS_ID[cols[3]])
    if words:
        sents.append((words, tags))
    return sents


def find_split(ewt: Path, split: str) -> Path:
    for name in (f"en_ewt-ud-{split}.conllu.xz", f"en_ewt-ud-{split}.conllu"):
        if (ewt / name).exists():
            return ewt / name
    raise SystemExit(f"error: no en_ewt-ud-{split}.conllu[.xz] in {ewt}")


def make_tagdict(sents: list[Sentence], min_freq: int, min_ratio: float) -> dict[str, int]:
    """Frequent words (normalized, cased) that take one tag almost always: they skip the perceptron."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for words, tags in sents:
        for w, t in zip(words, tags):
            counts[T.normalize(w)][t] += 1
    out = {}
    for w, c in counts.items():
        tag, n = c.most_common(1)[0]
        total = sum(c.values())
        if total >= min_freq and n / total >= min_ratio:
            out[w] = tag
    return out


def lowercase_initial(sents: list[Sentence], frac: float, seed: int) -> list[Sentence]:
    """Copies of a fraction of sentences with the first word lowercased (text with sloppy capitals, or a
    sentence boundary the analyzer put mid-sentence); proper nouns and 'I' are left alone."""
    rng = random.Random(seed)
    out = []
    for words, tags in sents:
        w0 = words[0]
        if w0[:1].isupper() and w0 != "I" and tags[0] != UPOS_ID["PROPN"] and not w0.isupper() \
                and rng.random() < frac:
            out.append(([w0.lower()] + words[1:], tags))
    return out


# --- distributional lexicon from unlabeled prose ------------------------------------------------------------
# A causal tagger cannot look at the next word, but a word's usual neighbours in a large corpus tell a lot about
# its class (Brown-cluster features; Koo et al. 2008, Owoputi et al. 2013). We cluster words by their left and
# right neighbours in ~18M words of public-domain prose (PPMI -> SVD -> spherical k-means) and record how often
# each word is capitalised mid-sentence (PROPN vs NOUN). Only the per-word table ships, so tagging stays causal.

PROSE = ("english_prose/eltec_eng/eltec_eng_level1.jsonl.xz",
         "english_prose/standard_ebooks/standard_ebooks_selection.jsonl.xz")
_TOK = re.compile(r"\w+(?=n't)|n't|'(?:s|re|ll|ve|d|m|t)\b|\w+|[^\w\s]")
_CAP_EDGES = (0.02, 0.2, 0.5, 0.8, 0.98)


def prose_texts(data: Path, max_chars: int) -> list[str]:
    out, n = [], 0
    for rel in PROSE:
        with lzma.open(data / rel, "rt", encoding="utf-8") as f:
            for line in f:
                t = json.loads(line)["text"]
                out.append(t)
                n += len(t)
                if n >= max_chars:
                    return out
    return out


def build_lexicon(texts: list[str], extra: list[list[str]], n_words: int, n_ctx: int, dim: int,
                  k_fine: int, k_coarse: int, seed: int, log=print) -> dict[str, tuple[int, int, int]]:
    t0 = time.time()
    ids: dict[str, int] = {}
    streams, caps, mids = [], [], []
    for toks in ([_TOK.findall(T.normalize(t)) for t in texts] + extra):
        streams.append(np.array([ids.setdefault(x.lower(), len(ids)) for x in toks], np.int64))
        caps.append(np.array([x[:1].isupper() for x in toks], bool))
        # mid-sentence: the previous token is a word or a comma (so capitals there mean a name)
        mids.append(np.array([False] + [p[:1].isalnum() or p == "," for p in toks[:-1]], bool)[:len(toks)])
    allids = np.concatenate(streams)
    freq = np.bincount(allids, minlength=len(ids))
    order = np.argsort(-freq, kind="stable")
    V = min(n_words, int((freq >= 5).sum()))
    C = min(n_ctx, V)
    rank = np.full(len(ids), -1, np.int64)
    rank[order] = np.arange(len(ids))
    log(f"lexicon: {len(allids)} tokens, {len(ids)} types, clustering {V} ({time.time() - t0:.0f}s)")
    # co-occurrence counts with the C most frequent words, left and right: (V, 2C)
    keys = []
    for a in streams:
        r = rank[a]
        for w, c, off in ((r[1:], r[:-1], 0), (r[:-1], r[1:], C)):
            ok = (w < V) & (c < C)
            keys.append(w[ok] * (2 * C) + c[ok] + off)
    M = np.bincount(np.concatenate(keys), minlength=V * 2 * C).reshape(V, 2 * C).astype(np.float32)
    # PPMI with context smoothing (Levy et al. 2015), then a rank-`dim` projection
    pc = M.sum(0) ** 0.75
    pmi = np.log(np.maximum(M, 1e-9) * (pc.sum() / pc)[None, :] / np.maximum(M.sum(1, keepdims=True), 1))
    M = np.maximum(pmi, 0.0, dtype=np.float32)
    del pmi
    _, evecs = np.linalg.eigh(M.T @ M)  # top right-singular vectors of M
    E = M @ evecs[:, ::-1][:, :dim]  # (V, dim)
    E /= np.linalg.norm(E, axis=1, keepdims=True) + 1e-9
    fine = _kmeans(E, k_fine, seed)
    cent = np.stack([E[fine == j].mean(0) if (fine == j).any() else np.zeros(dim, np.float32) for j in range(k_fine)])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True) + 1e-9
    coarse = _kmeans(cent, k_coarse, seed)[fine]
    # capitalisation bucket: share of mid-sentence occurrences written with a capital
    cap_n = np.zeros(len(ids))
    mid_n = np.zeros(len(ids))
    for a, c, m in zip(streams, caps, mids):
        np.add.at(mid_n, a[m], 1)
        np.add.at(cap_n, a[m & c], 1)
    ratio = cap_n / np.maximum(mid_n, 1)
    bucket = np.searchsorted(np.array(_CAP_EDGES), ratio) + (mid_n < 3) * 10  # 10+: too rare to say
    words = [None] * len(ids)
    for w, j in ids.items():
        words[j] = w
    lex = {words[i]: (int(fine[rank[i]]), int(coarse[rank[i]]), int(bucket[i])) for i in order[:V]
           if "\n" not in words[i]}
    log(f"lexicon: {len(lex)} words, {k_fine}/{k_coarse} clusters ({time.time() - t0:.0f}s)")
    return lex


def _kmeans(X: np.ndarray, k: int, seed: int, iters: int = 12) -> np.ndarray:
    """Spherical k-means (rows of X unit length), seeded from the first rows (the most frequent words)
    spread by a random pick; returns labels."""
    rng = np.random.default_rng(seed)
    n = len(X)
    cent = X[rng.choice(min(n, 4 * k), size=k, replace=False)].copy()
    lab = np.zeros(n, np.int64)
    for _ in range(iters):
        lab = np.concatenate([(X[i:i + 8192] @ cent.T).argmax(1) for i in range(0, n, 8192)])
        sums = np.zeros_like(cent)
        np.add.at(sums, lab, X)
        empty = np.bincount(lab, minlength=k) == 0
        sums[empty] = X[rng.choice(n, size=int(empty.sum()), replace=False)]
        cent = sums / (np.linalg.norm(sums, axis=1, keepdims=True) + 1e-9)
    return lab


class Trainer:
    """Averaged perceptron over string features with lazily averaged weights (F grows as features appear)."""

    def __init__(self, cap: int = 1 << 18):
        self.ids: dict[str, int] = {}
        self.W = np.zeros((cap, N_UPOS))
        self.tot = np.zeros((cap, N_UPOS))
        self.ts = np.zeros((cap, N_UPOS))
        self.i = 0

    def fid(self, f: str) -> int:
        j = self.ids.get(f)
        if j is None:
            j = self.ids[f] = len(self.ids)
            if j >= len(self.W):
                for name in ("W", "tot", "ts"):
                    a = getattr(self, name)
                    setattr(self, name, np.concatenate([a, np.zeros_like(a)]))
        return j

    def update(self, ids: np.ndarray, truth: int, guess: int) -> None:
        for c, d in ((truth, 1.0), (guess, -1.0)):
            self.tot[ids, c] += (self.i - self.ts[ids, c]) * self.W[ids, c]
            self.ts[ids, c] = self.i
            self.W[ids, c] += d

    def averaged(self) -> np.ndarray:
        n = len(self.ids)
        tot = self.tot[:n] + (self.i - self.ts[:n]) * self.W[:n]
        return tot / max(self.i, 1)


def static_parts(words: list[str], lex: dict) -> list[tuple]:
    """Per word: (feature strings that ignore tags, lo, shape, l1) -- computed once, reused every epoch."""
    out = []
    norm = [T.normalize(w) for w in words]
    for k, w in enumerate(norm):
        p1 = norm[k - 1] if k >= 1 else None
        p2 = norm[k - 2] if k >= 2 else None
        lo = w.lower()
        l1 = "<s>" if p1 is None else p1.lower()
        l2 = "<s>" if p2 is None else p2.lower()
        f = (T.word_features(w, lex) + T.prev1_features(p1, lex) + T.prev2_features(p2, lex)
             + T.word_pair_features(lo, l1, l2))
        out.append((f, lo, T.shape(w), l1, l2, lex.get(lo, T._NOLEX)[0], w))
    return out


def train(sents: list[Sentence], tagdict: dict[str, int], lex: dict, epochs: int, seed: int = 0, dev=None,
          log=print) -> Trainer:
    tr = Trainer()
    data = []
    for words, tags in sents:
        parts = static_parts(words, lex)
        data.append(([(np.array([tr.fid(f) for f in p[0]], np.int64),) + p[1:] for p in parts], tags))
    rng = random.Random(seed)
    for ep in range(epochs):
        t0 = time.time()
        rng.shuffle(data)
        correct = total = 0
        for parts, tags in data:
            t1 = t2 = -1
            for (sid, lo, sh, l1, l2, c, w), gold in zip(parts, tags):
                guess = tagdict.get(w, -1)
                if guess < 0:
                    dyn = T.tag_features(t1, t2) + T.tag_pair_features(lo, sh, l1, c, t1, t2)
                    ids = np.concatenate([sid, np.array([tr.fid(f) for f in dyn], np.int64)])
                    tr.i += 1
                    guess = int(tr.W[ids].sum(0).argmax())
                    if guess != gold:
                        tr.update(ids, gold, guess)
                correct += guess == gold
                total += 1
                t2, t1 = t1, guess
        msg = f"epoch {ep + 1}/{epochs}: train acc {correct / total:.4f}  ({time.time() - t0:.1f}s, {len(tr.ids)} feats)"
        if dev is not None:
            feats, W = export(tr, prune=0.0)
            msg += f"  dev {accuracy(T.CausalTagger(feats, W, tagdict, lex), dev):.4f}"
        log(msg)
    return tr


def export(tr: Trainer, prune: float) -> tuple[list[str], np.ndarray]:
    W = tr.averaged()
    feats = sorted(tr.ids, key=tr.ids.get)
    keep = np.abs(W).max(1) > prune
    return [f for f, k in zip(feats, keep) if k], W[keep]


def prune(feats: list[str], W: np.ndarray, thresh: float) -> tuple[list[str], np.ndarray]:
    """Drop features whose every weight is tiny; zero the tiny weights of the rest (compresses better)."""
    W = np.where(np.abs(W) >= thresh, W, 0.0)
    keep = np.abs(W).max(1) > 0
    return [f for f, k in zip(feats, keep) if k], W[keep]


def accuracy(tagger: T.CausalTagger, sents: list[Sentence]) -> float:
    good = n = 0
    for words, tags in sents:
        pred = tagger.tag_sentence(words)
        good += sum(p == g for p, g in zip(pred, tags))
        n += len(tags)
    return good / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ewt", type=Path, default=DEFAULT_EWT, help="folder with en_ewt-ud-{train,dev,test}.conllu[.xz]")
    ap.add_argument("--out", type=Path, default=T.ARTIFACT)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prune", type=float, default=0.6, help="zero |averaged weight| below this (no dev loss at 0.6)")
    ap.add_argument("--lower-initial", type=float, default=0.0,
                    help="fraction of sentences also trained with their first word lowercased")
    ap.add_argument("--dict-min-freq", type=int, default=20)
    ap.add_argument("--dict-min-ratio", type=float, default=0.97)
    ap.add_argument("--prose", type=Path, default=None,
                    help="shared data folder holding english_prose/ (default: the parent of --ewt)")
    ap.add_argument("--prose-chars", type=float, default=120e6, help="read at most this many characters of prose")
    ap.add_argument("--clusters", type=str, default="1000,64", help="fine,coarse cluster counts")
    ap.add_argument("--reuse-lexicon", type=Path, default=None,
                    help="take the word-cluster lexicon from an earlier artifact instead of rebuilding it")
    ap.add_argument("--dev-every-epoch", action="store_true", help="print dev accuracy after each epoch (slower)")
    a = ap.parse_args(argv)
    if not a.ewt.is_dir():
        print(f"error: EWT folder not found: {a.ewt}", file=sys.stderr)
        return 2
    t0 = time.time()
    train_s, dev_s, test_s = (read_conllu(find_split(a.ewt, s)) for s in ("train", "dev", "test"))
    print(f"EWT: {len(train_s)} / {len(dev_s)} / {len(test_s)} sentences (train/dev/test)")
    k_fine, k_coarse = (int(x) for x in a.clusters.split(","))
    if a.reuse_lexicon:
        with np.load(a.reuse_lexicon, allow_pickle=False) as z:
            lex_ids = dict(zip(T._unpack(z["lex_words"]), map(tuple, z["lex_values"].tolist())))
    else:
        texts = prose_texts(a.prose or a.ewt.parent, int(a.prose_chars))
        lex_ids = build_lexicon(texts, [w for w, _ in train_s], 60000, 1000, 100, k_fine, k_coarse, a.seed)
    lex = T.lex_strings(lex_ids)
    tagdict = make_tagdict(train_s, a.dict_min_freq, a.dict_min_ratio)
    extra = lowercase_initial(train_s, a.lower_initial, a.seed) if a.lower_initial > 0 else []
    print(f"tag dictionary: {len(tagdict)} words; {len(extra)} lowercased-initial copies")
    feats, W = export(train(train_s + extra, tagdict, lex, a.epochs, a.seed,
                            dev=dev_s if a.dev_every_epoch else None), prune=0.0)
    n_all = len(feats)
    feats, W = prune(feats, W, a.prune)
    meta = {"trained_on": "UD_English-EWT v2.16 train", "epochs": a.epochs, "seed": a.seed, "prune": a.prune,
            "lower_initial": a.lower_initial, "dict_min_freq": a.dict_min_freq, "dict_min_ratio": a.dict_min_ratio, "clusters": a.clusters,
            "lexicon_from": [*PROSE, "EWT train words"], "prose_chars": a.prose_chars}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.stem + ".tmp.npz")
    T.save_artifact(tmp, feats, W, tagdict, lex_ids, meta)
    tagger = T.CausalTagger.load(tmp)
    dev_acc, test_acc = accuracy(tagger, dev_s), accuracy(tagger, test_s)
    meta.update(dev_accuracy=round(dev_acc, 4), test_accuracy=round(test_acc, 4))
    T.save_artifact(a.out, feats, W, tagdict, lex_ids, meta)
    tmp.unlink()
    print(f"features: {len(feats)} kept of {n_all} (prune |w| < {a.prune})")
    print(f"UPOS accuracy: dev {dev_acc:.4f}  test {test_acc:.4f}")
    t1 = time.perf_counter()
    T.CausalTagger.load(a.out)
    t_load = time.perf_counter() - t1
    n = sum(len(w) for w, _ in test_s)
    rates = []
    fresh = T.CausalTagger.load(a.out)
    for _ in range(2):  # cold per-word caches, then warm
        t1 = time.perf_counter()
        for words, _ in test_s:
            fresh.tag_sentence(words)
        rates.append(n / (time.perf_counter() - t1))
    print(f"speed: load {t_load * 1e3:.0f} ms; tag() {rates[0]:,.0f} words/s cold caches, {rates[1]:,.0f} warm "
          f"(EWT test, one core)")
    print(f"artifact: {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)  [{time.time() - t0:.0f}s total]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
