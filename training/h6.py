"""H6 (train-free): does a DENSE model already attend where ASA would let it?

For held-out windows, the dense model's attention probabilities are recomputed from its weights (the same
layer math as asa_runtime/model.py: its norms, Attention.project (qkv + RoPE), softmax(q k^T / sqrt(hs))).
Per layer (averaged over heads, query rows and windows) against the ASA-allowed pairs of the plan, and
against a random control mask with the same number of keys in every row (the query itself plus uniformly
drawn earlier positions, like the planner's `random` mode):

    mass   attention mass that falls on allowed pairs               sum_{j allowed} p_ij
    count  of the pairs attended more than uniformly (p_ij > 1/(i+1)), the share that are allowed
    topk   of each row's `topk` most attended keys, the share that are allowed
    density  allowed keys / causal keys (the same for ASA and random)

Rows whose allowed set is every earlier position say nothing (both masks cover the row); they are left out.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from asa_runtime.config import PlanConfig
from asa_runtime.model import rope_cache

from .prepare import Prepared, default_planner


def plan_to_mask(keys: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T, K) plan rows -> (B, T, T) bool allowed mask."""
    B = keys.shape[0]
    mask = torch.zeros(B, T, T + 1, dtype=torch.bool, device=keys.device)
    idx = torch.where(keys >= 0, keys.long(), torch.full_like(keys.long(), T))    # pads -> spare column T
    mask.scatter_(2, idx, True)
    return mask[..., :T]


def random_mask_like(allowed: torch.Tensor, seed: int) -> torch.Tensor:
    """Same per-row key count as `allowed` (B, T, T): the query itself + uniform earlier positions."""
    B, T, _ = allowed.shape
    g = torch.Generator().manual_seed(seed)
    counts = allowed.sum(-1)                                                # (B, T)
    score = torch.rand(B, T, T, generator=g).to(allowed.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=allowed.device).tril(-1)
    score = score.masked_fill(~causal, -1.0)                                # only strictly earlier keys
    rank = score.argsort(-1, descending=True).argsort(-1)                   # 0 = highest score
    mask = (rank < (counts - 1).clamp_min(0)[..., None]) & causal
    return mask | torch.eye(T, dtype=torch.bool, device=allowed.device)


@torch.no_grad()
def forward_with_probs(model, idx: torch.Tensor, mask: torch.Tensor | None = None):
    """Re-run the model densely (optionally restricted to `mask` (B, T, T)), returning
    (logits (B, T, V), [attention probabilities (B, H, T, T) per layer])."""
    cfg = model.cfg
    B, T = idx.shape
    H, Hkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    rc = rope_cache(T, hs, cfg.rope_theta, idx.device)                       # (T, hs/2, 2)
    allowed = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()[None]
    if mask is not None:
        allowed = allowed & mask                                            # (B, T, T)
    x = model.tok_embeddings(idx)                                           # (B, T, d)
    probs = []
    for layer in model.layers:
        a = layer.attention
        h = layer.attention_norm(x)
        q, k, v = a.project(h, rc)                                          # (B, H|Hkv, T, hs)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)  # (B, H, T, hs)
        att = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(hs)     # (B, H, T, T)
        att = att.masked_fill(~allowed[:, None], float("-inf"))
        p = torch.softmax(att, -1)
        probs.append(p)
        y = (p @ v.float()).to(x.dtype).transpose(1, 2).reshape(B, T, H * hs)
        x = x + a.wo(y)
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return model.output(model.norm(x)), probs


def overlap_stats(p: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, topk: int) -> dict:
    """p (B, H, T, T) probabilities; mask (B, T, T) allowed; rows (B, T) which query rows count."""
    B, H, T, _ = p.shape
    m = mask[:, None].expand_as(p)
    w = rows[:, None, :].expand(B, H, T).float()                            # row weights
    n = w.sum().clamp_min(1)
    mass = ((p * m).sum(-1) * w).sum() / n
    pos = torch.arange(T, device=p.device)
    strong = p > 1.0 / (pos[None, None, :, None] + 1)                       # above uniform over 0..i
    strong = strong & rows[:, None, :, None]
    count = (strong & m).sum() / strong.sum().clamp_min(1)
    kk = min(topk, T)
    top = p.topk(kk, -1).indices                                            # (B, H, T, kk)
    valid = top <= pos[None, None, :, None]                                  # rows i < kk have i+1 real keys
    hit = torch.gather(m, -1, top) & valid
    topk_share = ((hit.sum(-1) / valid.sum(-1).clamp_min(1)) * w).sum() / n
    return {"mass": float(mass), "count": float(count), "topk": float(topk_share)}


def _plans_for(prep: Prepared, split: str, plan_cfg: PlanConfig, idx: np.ndarray, planner_factory):
    """Cached plans when the folder has them for this exact config, else planned now."""
    entry = prep.meta.get("plans", {}).get(plan_cfg.mode)
    if entry and entry["config"] == plan_cfg.to_dict() and split in entry["splits"]:
        return prep.plans(split, plan_cfg.mode)[idx].astype(np.int32)
    planner = planner_factory(plan_cfg)
    pieces = prep.tokenizer().pieces
    tok, ctx = prep.tokens(split), prep.ctx
    return np.stack([np.asarray(planner.plan([pieces[t] for t in tok[w * ctx: w * ctx + ctx]]), dtype=np.int32)
                     for w in idx])


def run_h6(model, prep: Prepared, mode: str = "full", split: str = "valid", windows: int = 64, topk: int = 5,
           seed: int = 0, device="cpu", plan_cfg: PlanConfig | None = None, batch_size: int = 8,
           planner_factory=default_planner) -> dict:
    if model.cfg.plan.mode != "none":
        raise ValueError(f"H6 analyses a dense model; this one was trained with mode {model.cfg.plan.mode!r}")
    plan_cfg = plan_cfg or PlanConfig(mode=mode, k=prep.meta.get("plans", {}).get(mode, {}).get("k", 64))
    n = prep.windows(split)
    idx = np.unique(np.linspace(0, n - 1, min(windows, n)).round().astype(np.int64))
    keys_all = _plans_for(prep, split, plan_cfg, idx, planner_factory)
    L = model.cfg.n_layer
    acc = {"asa": [[] for _ in range(L)], "random": [[] for _ in range(L)]}
    dens, n_rows = [], 0
    model = model.to(device).eval()
    for s in range(0, len(idx), batch_size):
        x, _, _ = prep.batch(split, "none", idx[s: s + batch_size])
        x = torch.from_numpy(x).to(device)
        T = x.shape[1]
        allowed = plan_to_mask(torch.from_numpy(keys_all[s: s + batch_size]).to(device), T)   # (B, T, T)
        rand = random_mask_like(allowed, seed * 100003 + s)
        pos = torch.arange(T, device=device)
        rows = allowed.sum(-1) < (pos + 1)[None]                            # (B, T) rows not fully covered
        _, probs = forward_with_probs(model, x)
        for li, p in enumerate(probs):
            for name, m in (("asa", allowed), ("random", rand)):
                st = overlap_stats(p, m, rows, topk)
                acc[name][li].append((st, int(rows.sum())))
        dens.append(float(((allowed.sum(-1).float() / (pos + 1)[None]) * rows).sum()))
        n_rows += int(rows.sum())

    def mean(items):
        tot = sum(w for _, w in items) or 1
        return {k: sum(st[k] * w for st, w in items) / tot for k in ("mass", "count", "topk")}

    layers = [{"layer": li, "asa": mean(acc["asa"][li]), "random": mean(acc["random"][li])} for li in range(L)]
    overall = {name: {k: sum(l[name][k] for l in layers) / L for k in ("mass", "count", "topk")}
               for name in ("asa", "random")}
    return {"mode": plan_cfg.mode, "plan": plan_cfg.to_dict(), "split": split, "windows": int(len(idx)),
            "ctx": prep.ctx, "rows": n_rows, "density": sum(dens) / max(n_rows, 1), "topk": topk,
            "layers": layers, "overall": overall}


def format_h6(res: dict) -> str:
    lines = [f"H6 on {res['windows']} {res['split']} windows (ctx {res['ctx']}), plan {res['mode']} "
             f"(window {res['plan']['window']}, sinks {res['plan']['sinks']}, k {res['plan']['k']}); "
             f"density {res['density']:.3f} over {res['rows']:,} rows",
             "| layer | mass ASA | mass random | count ASA | count random | top-k ASA | top-k random |",
             "|---|---|---|---|---|---|---|"]
    for l in res["layers"] + [{"layer": "all", **res["overall"]}]:
        a, r = l["asa"], l["random"]
        lines.append(f"| {l['layer']} | {a['mass']:.3f} | {r['mass']:.3f} | {a['count']:.3f} | {r['count']:.3f} "
                     f"| {a['topk']:.3f} | {r['topk']:.3f} |")
    return "\n".join(lines)
