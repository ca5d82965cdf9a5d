"""Dense GGUF export for llama.cpp: the same weights as a llama-architecture GGUF (gguf-py's GGUFWriter),
with the byte-level BPE tokenizer embedded so that llama.cpp tokenizes exactly as we do.

What llama.cpp runs is the *dense* model (plan mode `none`): GGUF has no way to express an AttentionPlan.
It is the comparison point for the product's claims, on the very same weights.

Layout decisions (each checked by tests/test_gguf.py against llama.cpp itself):
- RoPE: the model rotates interleaved pairs (x[2i], x[2i+1]), llama.cpp's LLAMA rope ("norm" type), which
  is what Meta-layout checkpoints use, so q/k are written as they are (no HF-style permutation).
- Tied embeddings: no output.weight is written; llama.cpp's llama loader then reuses token_embd.
- Tokenizer: tokenizer.ggml.model "gpt2" (byte-level BPE), pre "gpt-2" (the GPT-2 split regex, which is
  what the HF ByteLevel(use_regex=True) pre-tokenizer in tokenizer.json uses), the vocab strings and merges
  as tokenizer.json stores them, "<|endoftext|>" a CONTROL token serving as bos and eos, no bos added.
- Norm weights stay float32 in a float16 file (as llama.cpp's own converter does).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import common
from .common import ExportError, atomic_file, io_error, llama_weights, load_model, stored_dtype

DTYPES = ("float32", "float16")
PRE_TOKENIZER = "gpt-2"          # llama.cpp's name for the GPT-2 split regex (LLAMA_VOCAB_PRE_TYPE_GPT2)


def _tensor_map(n_layer: int) -> dict[str, str]:
    """Llama (Meta) names -> GGUF names of the llama architecture."""
    import gguf

    T, N = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES
    m = {"tok_embeddings.weight": N[T.TOKEN_EMBD] + ".weight",
         "norm.weight": N[T.OUTPUT_NORM] + ".weight",
         "output.weight": N[T.OUTPUT] + ".weight"}
    per_layer = {"attention_norm": T.ATTN_NORM, "attention.wq": T.ATTN_Q, "attention.wk": T.ATTN_K,
                 "attention.wv": T.ATTN_V, "attention.wo": T.ATTN_OUT, "ffn_norm": T.FFN_NORM,
                 "feed_forward.w1": T.FFN_GATE, "feed_forward.w3": T.FFN_UP, "feed_forward.w2": T.FFN_DOWN}
    for i in range(n_layer):
        for ours, t in per_layer.items():
            m[f"layers.{i}.{ours}.weight"] = N[t].format(bid=i) + ".weight"
    return m


def tokenizer_vocab(tokenizer_json: str, n_vocab: int) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """(tokens, token types, merges, special token ids) from a byte-level BPE tokenizer.json, padded to
    the model's n_vocab rows with unused placeholder tokens (llama.cpp needs one token per embedding row)."""
    import gguf

    d = json.loads(tokenizer_json)
    model = d.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export needs a BPE tokenizer, got {model.get('type')!r}")
    pre = d.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        raise ExportError("GGUF export supports the byte-level BPE with the GPT-2 split regex and no prefix "
                          f"space only (tokenizer.json pre_tokenizer: {json.dumps(pre, sort_keys=True)})")
    if d.get("normalizer"):
        raise ExportError("GGUF export: a tokenizer with a normalizer is not supported")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in d.get("added_tokens") or []}
    for content, t in added.items():
        vocab.setdefault(content, t["id"])
    by_id = {i: s for s, i in vocab.items()}
    if len(by_id) > n_vocab or max(by_id) >= n_vocab:
        raise ExportError(f"tokenizer has {len(by_id)} ids, the model only {n_vocab} rows")
    tokens, types = [], []
    for i in range(n_vocab):
        s = by_id.get(i)
        if s is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif s in added and added[s].get("special", False):
            tokens.append(s)
            types.append(gguf.TokenType.CONTROL)
        elif s in added:
            tokens.append(s)
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(s)
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    special = {s: t["id"] for s, t in added.items() if t.get("special", False)}
    return tokens, [int(t) for t in types], merges, special


def export(model_path: Path, out: Path, *, dtype: str | None = None, progress: bool = True) -> Path:
    """Write `model_path`'s weights and tokenizer to the GGUF file `out` (atomically). dtype: "float32" or
    "float16" (default: float16 when the checkpoint is stored in float16, where that is lossless, else
    float32). Returns `out`."""
    import gguf

    from asa_runtime.tokenizer import EOS

    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"GGUF export supports --dtype {' or '.join(DTYPES)}, not {dtype}")
    if dtype is None:
        dtype = "float16" if stored_dtype(model_path) == "float16" else "float32"
    ckpt = load_model(model_path)
    cfg, tok = ckpt.config, ckpt.tokenizer
    tokens, types, merges, special = tokenizer_vocab(tok.to_str(), cfg.vocab_size)
    eos = special.get(EOS, tok.eos_id)

    state = llama_weights(ckpt.model)
    if cfg.tie_embeddings:
        state.pop("output.weight", None)          # llama.cpp reuses token_embd for a missing output
    names = _tensor_map(cfg.n_layer)
    unknown = sorted(state.keys() - names.keys())
    if unknown:
        raise ExportError(f"no GGUF name for tensor {unknown[0]} ({len(unknown)} unmapped)")
    np_half = np.float16 if dtype == "float16" else np.float32

    try:
        with atomic_file(out) as tmp:
            w = gguf.GGUFWriter(str(tmp), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
            w.add_name(Path(model_path).name if Path(model_path).is_dir() else str(model_path))
            w.add_description("ASA model exported dense (plan mode none) for llama.cpp; "
                              "its ASA sparse attention is not represented in GGUF")
            w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "float16" else gguf.LlamaFileType.ALL_F32)
            w.add_context_length(cfg.max_seq_len)
            w.add_embedding_length(cfg.d_model)
            w.add_block_count(cfg.n_layer)
            w.add_feed_forward_length(cfg.ffn_hidden)
            w.add_head_count(cfg.n_head)
            w.add_head_count_kv(cfg.n_kv_head)
            w.add_rope_dimension_count(cfg.head_dim)
            w.add_rope_freq_base(float(cfg.rope_theta))
            w.add_layer_norm_rms_eps(float(cfg.norm_eps))
            w.add_vocab_size(cfg.vocab_size)
            w.add_string("asa.plan.mode", cfg.plan.mode)   # what the weights were trained with (not run)

            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(PRE_TOKENIZER)
            w.add_token_list(tokens)
            w.add_token_types(types)
            w.add_token_merges(merges)
            w.add_bos_token_id(eos)
            w.add_eos_token_id(eos)
            w.add_add_bos_token(False)
            w.add_add_eos_token(False)

            for k in common.progress(list(state), "gguf: converting", progress):
                t = state[k].float().numpy()
                # 1-D tensors (norms) stay float32, as llama.cpp's converter keeps them
                w.add_tensor(names[k], t if t.ndim == 1 else t.astype(np_half, copy=False))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file(progress=progress)
            w.close()
    except OSError as e:
        raise io_error(out, e) from None
    return Path(out)

