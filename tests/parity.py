"""Backend parity helpers shared by the MLX and ONNX tests: the same greedy run on two LoadedModels."""
import torch

from asa_runtime.session import Session


def greedy_run(lm, ids, steps, all_logits=True, **session_kw):
    """Prefill `ids` then `steps` greedy decode steps: (prefill logits (T, V), or (1, V) for the last
    only, step logits (steps, V) or None, tokens, session)."""
    s = Session(lm, **session_kw)
    pre = s.feed(ids, all_logits=True) if all_logits else s.feed(ids)[None]
    logits, outs, toks = pre[-1], [], []
    for _ in range(steps):
        t = int(logits.argmax())
        toks.append(t)
        logits = s.step(t)
        outs.append(logits)
    return pre, torch.stack(outs) if outs else None, toks, s


def assert_parity(ref, other, ids, steps, tol, all_logits=True, **session_kw):
    """Logits within `tol` (prefill and every decode step), the same greedy tokens and the same number of
    cache compactions; returns both sessions."""
    pre_r, dec_r, tok_r, sr = greedy_run(ref, ids, steps, all_logits, **session_kw)
    pre_o, dec_o, tok_o, so = greedy_run(other, ids, steps, all_logits, **session_kw)
    assert (pre_r - pre_o).abs().max().item() <= tol
    assert tok_o == tok_r
    if steps:
        assert (dec_r - dec_o).abs().max().item() <= tol
    assert so.slots.compactions == sr.slots.compactions
    return sr, so
