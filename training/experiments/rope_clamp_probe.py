"""Does asa-small lose past its training length because far keys sit at relative positions it never saw?

Issue 16's long-context target: asa-small v3 scores 27.08 at 2048 tokens but 28.49 at 8k and 29.36 at 32k, while
its dense twin with a sliding window (which never sees a key more than 2048 tokens back) gets *better* with
length. ASA rows hold keys from anywhere in the document (the 4 sinks, lexical-cohesion mentions), so past 2048
tokens the attention reads RoPE rotations of distances the model was never trained on. The probe: score every
far key (distance > w) as if it were exactly w tokens back, ReRoPE-style (Su, 2023): with RoPE, q_i . k_j
depends on j - i only, and R(w) q_raw . k_raw is the score at distance w for any i, j. Near keys keep their true
distance; the plan (which keys) is unchanged. CPU, no training: `python -m training.experiments.rope_clamp_probe`
(needs runs/asa_prep, `asa-train prepare`). A probe outside the runtime: it patches Attention.forward for its own
evaluation only, and checks first that its unclamped path equals the model's own forward.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from asa_runtime import model as M
from training.long_context import Method, sequence_nll

REPO = Path(__file__).resolve().parents[2]
CHUNK = 256                                   # queries per gathered block (bounds memory at 32k)


def clamped_attention(q_raw, k_raw, v, rc, keys, w: int | None, rc_w):
    """q_raw (B, H, T, hs), k_raw and v (B, Hkv, T, hs) before RoPE; keys (B, T, K) token positions, -1 padded.
    Keys more than w back are scored at distance w (w None: every key at its true distance)."""
    B, H, T, hs = q_raw.shape
    Hkv = k_raw.shape[1]
    q, k = M.apply_rope(q_raw, rc).float(), M.apply_rope(k_raw, rc).float()
    if w is not None:
        qf = M.apply_rope(q_raw, rc_w.expand(T, -1, -1)).float()             # every query rotated by R(w)
    kr, vf = k_raw.float(), v.float()
    if Hkv != H:
        rep = H // Hkv
        k, kr, vf = (t.repeat_interleave(rep, 1) for t in (k, kr, vf))
    out = torch.empty(B, H, T, hs)
    pos = torch.arange(T)
    for b in range(B):
        for s in range(0, T, CHUNK):
            e = min(T, s + CHUNK)
            idx = keys[b, s:e].long()                                        # (C, K)
            ok = idx >= 0
            ic = idx.clamp(min=0)
            kg = k[b][:, ic]                                                 # (H, C, K, hs)
            sc = torch.einsum("hcd,hckd->hck", q[b, :, s:e], kg)
            if w is not None:
                far = (pos[s:e, None] - idx) > w                              # (C, K)
                if far.any():
                    sf = torch.einsum("hcd,hckd->hck", qf[b, :, s:e], kr[b][:, ic])
                    sc = torch.where(far, sf, sc)
            sc = (sc * hs ** -0.5).masked_fill(~ok, float("-inf"))
            out[b, :, s:e] = torch.einsum("hck,hckd->hcd", torch.softmax(sc, -1), vf[b][:, ic])
    return out.type_as(q_raw)


def patch(w: int | None):
    def forward(self, x, rc, keys, slots, attn_mask, cache, clamp=None):
        assert cache is None and isinstance(keys, torch.Tensor), "probe: no-cache forward with plan rows only"
        B, T, _ = x.shape
        H, Hkv, hs = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        q, k, v = self.wqkv(x).split([H * hs, Hkv * hs, Hkv * hs], -1)
        q = q.reshape(B, T, H, hs).transpose(1, 2)
        k = k.reshape(B, T, Hkv, hs).transpose(1, 2)
        v = v.reshape(B, T, Hkv, hs).transpose(1, 2)
        rc_w = M.rope_cache((w or 0) + 1, hs, self.cfg.rope_theta)[-1:]       # (1, hs/2, 2): position w
        y = clamped_attention(q, k, v, rc, keys, w, rc_w)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * hs))
    M.Attention.forward = forward


def nll(model, seq: np.ndarray, keys: np.ndarray) -> np.ndarray:
    return sequence_nll(model, seq, Method(), keys, "cpu")                 # the evaluation's own scoring


def main(argv=None):
    from asa_runtime.checkpoint import load_checkpoint
    from asa_runtime.registry import resolve
    from training.long_context import context_windows, plan_sequences
    from training.prepare import Prepared

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--prep", default=str(REPO / "runs" / "asa_prep"))
    # the defaults are the committed run on the evaluation's windows (rope_clamp/full; ~32 min on 2 cores)
    ap.add_argument("--contexts", default="8192,32768")
    ap.add_argument("--clamps", default="2048,none", help="w values: far keys scored at distance w")
    ap.add_argument("--max-tokens", type=int, default=131072, help="held-out tokens per context (from the start)")
    ap.add_argument("--out", default=str(REPO / "training" / "results" / "asa_v2" / "rope_clamp" / "full"))
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    original = M.Attention.forward
    ck = load_checkpoint(resolve(a.model), device="cpu", dtype=torch.float32)
    model, cfg = ck.model.eval(), ck.config.plan
    prep = Prepared.open(Path(a.prep))
    pieces = prep.tokenizer().pieces
    ids = np.asarray(prep.tokens("valid"), dtype=np.int64)
    ctxs = [int(c) for c in a.contexts.split(",")]
    clamps = [None if c == "none" else int(c) for c in a.clamps.split(",")]

    # the probe's unclamped attention must be the model's own (first 512 tokens)
    seq = ids[:513]
    keys = plan_sequences(cfg, pieces, [seq[:-1]], 1)[0]
    ref = nll(model, seq, keys)
    patch(None)
    got = nll(model, seq, keys)
    M.Attention.forward = original
    gap = float(np.abs(ref - got).max())
    assert gap < 1e-3, f"the probe's attention differs from the model's: {gap}"

    res = {"model": a.model, "plan": cfg.to_dict(), "max_tokens": a.max_tokens, "check_max_nll_gap": gap,
           "ppl": {}, "seconds": {}}
    for L in ctxs:
        wins = context_windows(ids, L, a.max_tokens)
        plans = plan_sequences(cfg, pieces, [w[:-1] for w in wins], 2)
        for c in clamps:
            if c is not None and c >= L:
                continue
            t = time.time()
            patch(c)
            tot = np.concatenate([nll(model, w, p) for w, p in zip(wins, plans)])
            M.Attention.forward = original
            key = f"{L}/{c or 'none'}"
            res["ppl"][key] = math.exp(float(tot.mean()))
            res["seconds"][key] = round(time.time() - t, 1)
            print(f"context {L}, far keys at {c or 'their true distance'}: ppl {res['ppl'][key]:.3f} "
                  f"({len(wins)} windows, {res['seconds'][key]} s)", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "rope_clamp.json.tmp"
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(out / "rope_clamp.json")


if __name__ == "__main__":
    main()
