"""`asa-train prepare`: corpus -> tokenizer -> token ids -> fixed windows -> AttentionPlan per window, on disk.

Layout of a prepared folder (all plain numpy memmaps + JSON, so training never re-tokenizes or re-plans):

    meta.json                   ctx, vocab, tokenizer sha256, per split: tokens, windows, words; per mode: plan K
    tokenizer.json
    {split}.tokens.u16          flat token ids of the split (documents joined, each ended by <|endoftext|>)
    {split}.plan.{mode}.i16     (windows, ctx, K) int16 key positions inside the window, -1 padded

Window w covers tokens [w*ctx, w*ctx+ctx] (ctx inputs, the next ctx as targets), so windows never overlap
in the positions they score. Its plan is computed on its own ctx token pieces, exactly what the model sees.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from asa_runtime.checkpoint import analyzer_info
from asa_runtime.config import PlanConfig
from asa_runtime.tokenizer import Tokenizer

from . import corpus

SPLITS = ("train", "valid", "wt2_valid", "wt2_test")
PLAN_MODES = ("full", "pos_only", "features_only", "random", "random_bonds", "local")


# ---- planner hook ------------------------------------------------------------------------------------
def default_planner(plan_cfg: PlanConfig):
    """The linguistic planner of asa_runtime (mode "none" -> None: dense, nothing to cache)."""
    if plan_cfg.dense:
        return None
    from asa_runtime.linguistics.planner import Planner

    return Planner(plan_cfg)


# ---- folder access -----------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Read-only view of a prepared folder."""
    root: Path
    meta: dict

    @classmethod
    def open(cls, root) -> "Prepared":
        root = Path(root)
        if not (root / "meta.json").is_file():
            raise FileNotFoundError(f"{root}: not a prepared data folder (no meta.json); run `asa-train prepare`")
        return cls(root, json.loads((root / "meta.json").read_text()))

    @property
    def ctx(self) -> int:
        return self.meta["ctx"]

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_file(self.root / "tokenizer.json")

    def tokens(self, split: str) -> np.ndarray:
        if split not in self.meta["splits"]:
            raise KeyError(f"split {split!r} not prepared (have: {', '.join(self.meta['splits'])})")
        return np.memmap(self.root / f"{split}.tokens.u16", dtype=np.uint16, mode="r")

    def windows(self, split: str) -> int:
        return self.meta["splits"][split]["windows"]

    def has_plans(self, split: str, mode: str) -> bool:
        return mode == "none" or (mode in self.meta.get("plans", {}) and
                                  split in self.meta["plans"][mode]["splits"])

    def plans(self, split: str, mode: str) -> np.ndarray | None:
        if mode == "none":
            return None
        if not self.has_plans(split, mode):
            raise KeyError(f"no {mode!r} plans for split {split!r}; run `asa-train prepare --mode {mode}`")
        K = self.meta["plans"][mode]["k"]
        return np.memmap(self.root / f"{split}.plan.{mode}.i16", dtype=np.int16, mode="r",
                         shape=(self.windows(split), self.ctx, K))

    def batch(self, split: str, mode: str, idx: np.ndarray):
        """Windows `idx` -> (x, y) int64 (B, ctx) and keys int32 (B, ctx, K) or None."""
        tok, ctx = self.tokens(split), self.ctx
        rows = np.stack([tok[w * ctx: w * ctx + ctx + 1] for w in idx]).astype(np.int64)   # (B, ctx+1)
        plans = self.plans(split, mode)
        keys = None if plans is None else plans[np.asarray(idx)].astype(np.int32)          # (B, ctx, K)
        return rows[:, :-1], rows[:, 1:], keys


# ---- tokens ------------------------------------------------------------------------------------------
def _encode_docs(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    out = []
    for ids in tok.encode_batch(texts):
        out.extend(ids)
        out.append(tok.eos_id)
    return np.asarray(out, dtype=np.uint16)


def _write_tokens(root: Path, split: str, ids: np.ndarray, ctx: int, words: int, extra: dict) -> dict:
    ids.tofile(root / f"{split}.tokens.u16")
    return {"tokens": int(ids.size), "windows": int((ids.size - 1) // ctx), "words": int(words), **extra}


def prepare_tokens(out, ctx: int = 256, vocab_size: int = 16384, train_words: int | None = 2_000_000,
                   valid_books: int = 4, valid_words: int | None = 250_000, seed: int = 0,
                   tokenizer_path=None, data_root=None, wikitext: bool = True, log=print) -> dict:
    """Tokenize the corpus into `out` (skipped when meta.json exists with the same settings)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(ctx=ctx, vocab_size=vocab_size, train_words=train_words, valid_books=valid_books,
                    valid_words=valid_words, seed=seed, wikitext=wikitext,
                    tokenizer=str(tokenizer_path) if tokenizer_path else None)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == settings:
            log(f"tokens: reusing {out}")
            return meta
        raise ValueError(f"{out} was prepared with other settings; use a new --out folder")

    books = corpus.load_books(data_root)
    train_b, valid_b = corpus.split_books(books, n_valid=valid_books, seed=seed)
    train_b = corpus.select_books(train_b, train_words)
    valid_b = corpus.select_books(valid_b, valid_words)
    log(f"corpus: {len(train_b)} train books ({sum(b.words for b in train_b):,} words), "
        f"{len(valid_b)} held-out books ({sum(b.words for b in valid_b):,} words)")

    if tokenizer_path:
        tok = Tokenizer.from_file(tokenizer_path)
    else:
        log(f"training byte-level BPE, vocab {vocab_size}")
        tok = Tokenizer.train((b.text for b in train_b), vocab_size=vocab_size)
    docs = {"train": ([b.text for b in train_b], sum(b.words for b in train_b), {"books": [b.id for b in train_b]}),
            "valid": ([b.text for b in valid_b], sum(b.words for b in valid_b), {"books": [b.id for b in valid_b]})}
    if wikitext:
        for name in corpus.WIKITEXT2:
            text = corpus.wikitext2(name, data_root)
            # word-level count as in the standard WikiText-2 setup (whitespace tokens + <eos> per line)
            docs[name] = ([text], corpus.word_level_count(text), {})
    return write_prepared(out, tok, docs, ctx, settings, log)


def write_prepared(out, tok: Tokenizer, docs: dict, ctx: int, settings: dict | None = None, log=print) -> dict:
    """Low level: `docs` = {split: (texts, words, extra meta)} -> token files + meta.json in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tok.vocab_size > 65535:
        raise ValueError("vocab larger than 65535 does not fit the uint16 token files")
    tok.save(out / "tokenizer.json")
    splits = {}
    for name, (texts, words, extra) in docs.items():
        ids = _encode_docs(tok, texts)
        splits[name] = _write_tokens(out, name, ids, ctx, words, extra)
        s = splits[name]
        log(f"  {name}: {s['tokens']:,} tokens, {s['windows']:,} windows of {ctx}, {s['words']:,} words")
    meta = {"settings": settings or {}, "ctx": ctx, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
            "tokenizer_sha256": hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest(),
            "splits": splits, "plans": {}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


# ---- plans -------------------------------------------------------------------------------------------
_W: dict = {}


def _worker_init(root: str, split: str, ctx: int, K: int, n: int, mode: str, plan_cfg: dict,
                 factory: Callable, tmp: str):
    _W.update(tokens=np.memmap(Path(root) / f"{split}.tokens.u16", dtype=np.uint16, mode="r"),
              out=np.memmap(tmp, dtype=np.int16, mode="r+", shape=(n, ctx, K)), ctx=ctx, K=K,
              planner=factory(PlanConfig.from_dict(plan_cfg)),
              pieces=Tokenizer.from_file(Path(root) / "tokenizer.json").pieces)


def _plan_windows(ws: range) -> int:
    tok, out, ctx, K, planner, pieces = (_W[k] for k in ("tokens", "out", "ctx", "K", "planner", "pieces"))
    for w in ws:
        ids = tok[w * ctx: w * ctx + ctx]
        keys = np.asarray(planner.plan([pieces[i] for i in ids]), dtype=np.int32)   # (ctx, K')
        if keys.ndim != 2 or keys.shape[0] != ctx or keys.shape[1] > K:
            raise ValueError(f"planner returned shape {keys.shape}, expected ({ctx}, <= {K})")
        out[w, :, : keys.shape[1]] = keys
    out.flush()
    return len(ws)


def prepare_plans(root, mode: str, plan_cfg: PlanConfig | None = None, splits=SPLITS, workers: int | None = None,
                  factory: Callable = default_planner, chunk: int = 64, progress: bool = True, log=print) -> dict:
    """Plan every window of `splits` for `mode` (cached: a split already planned with the same config is kept)."""
    from tqdm import tqdm

    root = Path(root)
    prep = Prepared.open(root)
    plan_cfg = plan_cfg or PlanConfig(mode=mode)
    if plan_cfg.mode != mode:
        plan_cfg = PlanConfig.from_dict({**plan_cfg.to_dict(), "mode": mode})
    if mode == "none":
        return prep.meta
    entry = prep.meta["plans"].get(mode)
    if entry and entry["config"] != plan_cfg.to_dict():
        raise ValueError(f"{root}: {mode} plans exist with another plan config; use a new folder")
    # plans depend on the analyzer's artifacts too (a new tagger changes every plan): stale ones are redone
    ana = analyzer_info() if factory is default_planner else None
    if entry and entry.get("analyzer") != ana:
        log(f"plans {mode}: made with another analyzer; planning again")
        entry = None
    entry = entry or {"config": plan_cfg.to_dict(), "k": plan_cfg.k, "splits": [], "analyzer": ana}
    K, ctx = plan_cfg.k, prep.ctx
    workers = workers if workers is not None else max(1, (os.cpu_count() or 1))
    for split in splits:
        if split not in prep.meta["splits"] or split in entry["splits"]:
            continue
        n = prep.windows(split)
        tmp = root / f"{split}.plan.{mode}.i16.tmp"
        np.memmap(tmp, dtype=np.int16, mode="w+", shape=(max(n, 1), ctx, K))[:] = -1
        args = (str(root), split, ctx, K, max(n, 1), mode, plan_cfg.to_dict(), factory, str(tmp))
        jobs = [range(s, min(n, s + chunk)) for s in range(0, n, chunk)]
        bar = tqdm(total=n, desc=f"plans {mode}/{split}", unit="win", disable=not progress, leave=False)
        if workers <= 1:
            _worker_init(*args)
            for j in jobs:
                bar.update(_plan_windows(j))
        else:
            with mp.get_context("fork").Pool(workers, initializer=_worker_init, initargs=args) as pool:
                for done in pool.imap_unordered(_plan_windows, jobs):
                    bar.update(done)
        bar.close()
        os.replace(tmp, root / f"{split}.plan.{mode}.i16")
        plans = np.memmap(root / f"{split}.plan.{mode}.i16", dtype=np.int16, mode="r", shape=(max(n, 1), ctx, K))
        mean_keys = float((plans[: min(n, 256)] >= 0).sum(-1).mean()) if n else 0.0
        entry["splits"].append(split)
        entry.setdefault("mean_keys", {})[split] = round(mean_keys, 2)
        log(f"plans {mode}/{split}: {n:,} windows, {mean_keys:.1f} keys per query (first 256 windows)")
        prep.meta["plans"][mode] = entry
        (root / "meta.json").write_text(json.dumps(prep.meta, indent=1) + "\n")
    return prep.meta
