"""Does a model use far context? Loss on words that recur long after their last mention, and what a plan
can reach.

Words come from the BPE pieces (no analyzer, so every model is judged on the same targets): a word is a
run of alphabetic pieces, the first one possibly after a space, the others glued to it ("Feather"+"stone").
A recurrence is a word whose lower-cased text occurred earlier in the same evaluated sequence; its gap is
the distance in tokens from the start of that last mention to the start of this one. Targets are
  - names: capitalised words of >= 3 letters whose lower-case form never occurs in the held-out text, and
  - rare words: any other word the BPE splits into >= 2 pieces (the 12k-piece vocabulary holds the frequent
    words whole, so a split word is rarer in the training corpus),
bucketed by gap. The continuation pieces of such a word (all but its first) are where an earlier mention
helps most: after "Casa" a model that can see "Casaubon" 3,000 tokens back can copy "ubon". The first piece
(predicting that the name comes at all) is reported separately; first mentions (no earlier one in the
sequence) are the same kind of words with nothing to copy from, as a yardstick.

`plan_reach` states what a plan's rows touch: key distances i - j outside the sinks, and for each target
whether the row that predicts a target piece (the row of the piece before it) holds a token of the last
mention. A plan row is one layer's reach; stacked layers compose rows, so this is a lower bound on what the
model can see, and an upper bound is the union of rows over n_layer hops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GAP_BUCKETS = ((16, 256), (256, 2048), (2048, 1 << 30))        # (lo, hi]: near, within training ctx, beyond


def bucket_name(lo: int, hi: int) -> str:
    return f"gap {lo}-{hi}" if hi < 1 << 30 else f"gap > {lo}"


@dataclass(frozen=True)
class Word:
    start: int            # first token (index in the sequence)
    end: int              # one past its last token
    text: str             # as written, without the leading space

    @property
    def key(self) -> str:
        return self.text.lower()


def words(ids, pieces) -> list[Word]:
    """Words of a token sequence: runs of alphabetic pieces (see the module docstring)."""
    out: list[Word] = []
    start, text = -1, ""                                         # start >= 0: a word is open
    for t, i in enumerate(ids):
        p = pieces[int(i)]
        if start >= 0 and p.isalpha():                          # glued to the open word (no space)
            text += p
            continue
        if start >= 0:
            out.append(Word(start, t, text))
            start = -1
        s = p.lstrip()
        if s.isalpha():                                         # a word opens, maybe after whitespace
            start, text = t, s
    if start >= 0:
        out.append(Word(start, len(ids), text))
    return out


def lowercase_vocabulary(ws) -> set[str]:
    """Words seen with a lower-case first letter somewhere (so a capitalised one there is not a name)."""
    return {w.key for w in ws if w.text[0].islower()}


def kind_of(w: Word, lower_seen: set[str]) -> str | None:
    if w.text[0].isupper() and len(w.text) >= 3 and w.key not in lower_seen:
        return "name"
    if w.end - w.start >= 2:
        return "rare"
    return None


@dataclass(frozen=True)
class Target:
    start: int
    end: int
    kind: str              # "name" | "rare"
    gap: int               # tokens from the last mention's start to this start; 0 = first mention
    prev_start: int = -1
    prev_end: int = -1


def find_targets(ids, pieces, lower_seen: set[str] | None = None) -> list[Target]:
    """Name and rare-word occurrences in one sequence, with the gap to their last earlier mention."""
    ws = words(ids, pieces)
    lower_seen = lowercase_vocabulary(ws) if lower_seen is None else lower_seen
    last: dict[str, Word] = {}
    out = []
    for w in ws:
        k = kind_of(w, lower_seen)
        prev = last.get(w.key)
        if k is not None:
            if prev is None:
                out.append(Target(w.start, w.end, k, 0))
            else:
                out.append(Target(w.start, w.end, k, w.start - prev.start, prev.start, prev.end))
        last[w.key] = w
    return out


def _mean(x: list[float]) -> dict:
    if not x:
        return {"loss": None, "ppl": None, "tokens": 0}
    m = float(np.mean(x))
    return {"loss": m, "ppl": math.exp(m), "tokens": len(x)}


def score_targets(nll: np.ndarray, targets: list[Target]) -> dict:
    """nll[t] = -log p(token t | tokens before it) for t >= 1 (nll[0] is ignored: nothing predicts it).
    -> per kind ("name", "rare", "all") and per bucket (first mention, gap buckets): mean loss of the
    first piece, of the continuation pieces and of whole words, with token and word counts."""
    acc: dict = {}
    for tg in targets:
        if tg.start < 1:
            continue
        if tg.gap == 0:
            b = "first mention"
        else:
            b = next((bucket_name(lo, hi) for lo, hi in GAP_BUCKETS if lo < tg.gap <= hi), None)
            if b is None:
                continue                                        # too close: the window sees it anyway
        for kind in (tg.kind, "all"):
            a = acc.setdefault(kind, {}).setdefault(b, {"first": [], "rest": [], "word": [], "words": 0})
            a["first"].append(float(nll[tg.start]))
            rest = [float(v) for v in nll[tg.start + 1: tg.end]]
            a["rest"] += rest
            a["word"].append(float(nll[tg.start: tg.end].sum()))
            a["words"] += 1
    out = {}
    for kind, buckets in acc.items():
        out[kind] = {b: {"words": a["words"], "first_piece": _mean(a["first"]), "continuation": _mean(a["rest"]),
                         "word_nll": float(np.mean(a["word"]))} for b, a in buckets.items()}
    return out


def merge_scores(parts: list[tuple[np.ndarray, list[Target]]]) -> dict:
    """score_targets over several sequences at once (each with its own nll and targets)."""
    nll = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.float32)
    targets, off = [], 0
    for arr, tgs in parts:
        targets += [Target(t.start + off, t.end + off, t.kind, t.gap, t.prev_start + off, t.prev_end + off)
                    for t in tgs]
        off += len(arr)
    return score_targets(nll, targets)


def plan_reach(plans, sinks: int, targets=None) -> dict:
    """What plans (one int32 (N, K) -1 padded array, or a list of them: one per sequence) let a query see
    directly, outside the `sinks` first tokens: distance i - j of its keys (max, quantiles, share of rows
    reaching past 256 / 2048 tokens), and for recurring targets (a list per sequence), the share whose
    predicting rows (the row before each piece) hold a token of the last mention."""
    if isinstance(plans, np.ndarray):
        plans, targets = [plans], None if targets is None else [targets]
    dists, fars, nkeys = [], [], []
    hit: dict = {}
    for s, keys in enumerate(plans):
        i = np.arange(keys.shape[0])[:, None]
        valid = keys >= max(sinks, 0)
        dist = np.where(valid, i - keys, 0)                     # (N, K)
        dists.append(dist[valid])
        fars.append(dist.max(1))
        nkeys.append((keys >= 0).sum(1))
        for tg in (targets[s] if targets is not None else ()):
            if tg.gap == 0 or tg.start < 1:
                continue
            b = next((bucket_name(lo, hi) for lo, hi in GAP_BUCKETS if lo < tg.gap <= hi), None)
            if b is None:
                continue
            rows = keys[tg.start - 1: tg.end - 1]               # the rows that predict the word's pieces
            h = hit.setdefault(b, [0, 0])
            h[0] += bool(((rows >= tg.prev_start) & (rows < tg.prev_end)).any())
            h[1] += 1
    d = np.concatenate(dists) if dists else np.zeros(0)
    far = np.concatenate(fars) if fars else np.zeros(0)
    n = far.size
    out = {"rows": int(n), "mean_keys": float(np.concatenate(nkeys).mean()) if n else 0.0,
           "max_distance": int(far.max()) if n else 0,
           "distance_p99": float(np.quantile(d, 0.99)) if d.size else 0.0,
           "distance_p999": float(np.quantile(d, 0.999)) if d.size else 0.0,
           "rows_reaching_256": float((far > 256).mean()) if n else 0.0,
           "rows_reaching_2048": float((far > 2048).mean()) if n else 0.0}
    if targets is not None:
        out["targets_reaching_last_mention"] = {b: {"share": h[0] / h[1], "words": h[1]} for b, h in hit.items()}
    return out


def kv_bound(planner, pieces: list[str], every: int = 64) -> dict:
    """Cache rows an incremental plan must keep (len of `reachable()`, sampled every `every` tokens) over one
    sequence of pieces: what a KV-evicting session holds at most, beside the plan's mean keys per query."""
    inc = planner.incremental()
    sizes = []
    for t, p in enumerate(pieces):
        inc.extend(p)
        if (t + 1) % every == 0:
            sizes.append(len(inc.reachable()))
    return {"max": int(max(sizes)) if sizes else 0, "mean": float(np.mean(sizes)) if sizes else 0.0,
            "tokens": len(pieces), "every": every}
