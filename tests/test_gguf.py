"""Dense GGUF export (exporters/gguf.py) checked against llama.cpp itself (llama-cpp-python):

1. llama.cpp's tokenizer, loaded from the GGUF alone, splits held-out text exactly as ours: every sentence
   of the UD English-EWT test split and WikiText-2 test lines (neither is in asa-small's training data,
   which is the English prose corpus; see training/corpus.py), plus hand-made hard cases.
2. llama.cpp's greedy continuation of asa-small's GGUF equals ours on the same weights run dense (plan mode
   `none`, full recompute in float32 through Transformer.forward) for GREEDY_STEPS tokens on several prompts,
   with the logit gap at every step below a stated tolerance.
3. Without llama.cpp: the file read back with gguf-py holds exactly the model's tensors and tokenizer.

Held-out text is read from ../shared/data at test time (the tests that need it skip when it is absent).
"""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from exporters.gguf import export, tokenizer_vocab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ASA_SMALL = ROOT / "asa_runtime" / "models" / "asa-small"
GREEDY_STEPS = 48
# Largest |logit difference| allowed between llama.cpp and torch at any step, per llama.cpp setup. Measured
# on asa-small over 5 prompts x 48 steps (logits span ~20-27 units), llama-cpp-python 0.3.36, x86-64 AVX2:
#   float32 GGUF, float32 KV cache, no flash attention:  max 1.1e-5  (the same math: layout and RoPE exact)
#   float32 GGUF, flash attention (f16 KV cache, f16 Q.K): max 6.5e-3
#   float16 GGUF, flash attention (llama.cpp's default):  max 1.1e-2 (activations rounded to f16 for matmuls)
# Each tolerance leaves 5-10x room for other SIMD paths; all 48 greedy tokens agreed in every case.
GGML_F32 = 0                     # ggml_type GGML_TYPE_F32, for the KV cache
SETUPS = {
    "f32-exact": ("float32", dict(flash_attn=False, type_k=GGML_F32, type_v=GGML_F32), 1e-4),
    "f32-flash": ("float32", dict(flash_attn=True), 0.03),
    "f16-flash": ("float16", dict(flash_attn=True), 0.05),
}

TRICKY = [
    "3.14159, 1,000,000 and 2024-11-22 at 10:30pm; 12345678901234567890 x 007.",
    "Wait... what?!?! No -- never!!! (((really))) [sic] {ok} <tag> #1 @home $5 %20 ^_^ ~~ |x|",
    "I'm sure you're right, but they'd've said it's O'Neil's; we'll see, won't we? Y'all CAN'T, DON'T, I'LL.",
    "naïve café résumé — “smart quotes” ‘single’ … Ünïcödé façade; Москва, 東京, 서울, عربى, हिन्दी, ελληνικά",
    "emoji 🙂👍🏽 and 👨‍👩‍👧‍👦 family; math ∑ x² ≤ ∞; arrows → ⇒; zero\u200bwidth; nbsp\u00a0here",
    "line one\nline two\n\nparagraph\n\n\n\nfour newlines\r\nwindows\ttab\t\ttabs",
    "many    spaces   between     words      and trailing spaces   ",
    "   leading spaces",
    " \n \n  \t \n",
    "\n",
    "x\n\n",
    "end of document.<|endoftext|>Start of the next one.<|endoftext|><|endoftext|>",
    "URLs: https://example.com/a_b-c?d=1&e=%20#frag and mail: first.last+tag@mail.example.org",
    "Code: def f(x): return x**2 if x>=0 else -x  # comment\n    indented();",
    "ALL CAPS SHOUTING AND MiXeD CaSe WoRdS, camelCaseIdentifier and snake_case_identifier.",
    "'s 't 're 've 'm 'll 'd ''quoted'' `backticks` \"double\" '",
    "123abc abc123 1st 2nd 3rd 4th 1990s '90s 3.5mm 10x 2^10 1e-5 -42 +7",
    "",
]


def _xz_lines(path: Path) -> list[str]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def heldout_sentences() -> list[str]:
    ewt = DATA / "ud_english_ewt" / "en_ewt-ud-test.conllu.xz"
    wt2 = DATA / "wikitext2_tokenized" / "wiki.test.tokens.xz"
    if not ewt.is_file() or not wt2.is_file():
        pytest.skip(f"held-out text not found under {DATA}")
    sents = [ln[len("# text = "):] for ln in _xz_lines(ewt) if ln.startswith("# text = ")]
    wiki = [ln + "\n" for ln in _xz_lines(wt2) if ln.strip()][:300]     # WikiText lines keep their " \n"
    docs = ["\n".join(sents[i:i + 7]) for i in range(0, 700, 7)]       # multi-line documents
    docs += ["\n\n".join(sents[i:i + 3]) + "\n" for i in range(700, 1000, 3)]
    return sents + wiki + docs


# ---- without llama.cpp -----------------------------------------------------------------------------
def test_gguf_holds_the_model_tensors_and_tokenizer(tmp_path, tiny_checkpoint):
    from exporters.common import llama_weights, load_model

    ckpt = load_model(tiny_checkpoint)
    cfg = ckpt.config
    want = llama_weights(ckpt.model)
    for dtype in ("float32", "float16"):
        out = export(tiny_checkpoint, tmp_path / f"tiny-{dtype}.gguf", dtype=dtype, progress=False)
        r = gguf.GGUFReader(out)
        f = {k: v.contents() for k, v in r.fields.items()}
        assert f["general.architecture"] == "llama" and f["tokenizer.ggml.model"] == "gpt2"
        assert f["tokenizer.ggml.pre"] == "gpt-2" and f["tokenizer.ggml.add_bos_token"] is False
        assert f["llama.block_count"] == cfg.n_layer and f["llama.attention.head_count_kv"] == cfg.n_kv_head
        assert f["llama.rope.dimension_count"] == cfg.head_dim
        vocab = json.loads(ckpt.tokenizer.to_str())["model"]["vocab"]
        assert f["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
        assert f["tokenizer.ggml.eos_token_id"] == f["tokenizer.ggml.bos_token_id"] == ckpt.tokenizer.eos_id
        types = f["tokenizer.ggml.token_type"]
        assert types[ckpt.tokenizer.eos_id] == gguf.TokenType.CONTROL and types.count(gguf.TokenType.CONTROL) == 1

        tensors = {t.name: t for t in r.tensors}
        assert "output.weight" not in tensors          # tied: llama.cpp reuses token_embd
        assert len(tensors) == 2 + 9 * cfg.n_layer
        pairs = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
                 "blk.1.attn_k.weight": "layers.1.attention.wk.weight",
                 "blk.0.ffn_gate.weight": "layers.0.feed_forward.w1.weight",
                 "blk.0.ffn_up.weight": "layers.0.feed_forward.w3.weight",
                 "blk.0.ffn_down.weight": "layers.0.feed_forward.w2.weight",
                 "blk.0.attn_norm.weight": "layers.0.attention_norm.weight"}
        for g, ours in pairs.items():
            t, w = tensors[g], want[ours].float()
            got = np.asarray(t.data).reshape(w.shape)
            if w.ndim == 1 or dtype == "float32":
                assert got.dtype == np.float32 and np.array_equal(got, w.numpy())
            else:
                assert got.dtype == np.float16 and np.array_equal(got, w.half().numpy())


def test_unsupported_tokenizer_is_refused():
    from exporters.common import ExportError

    d = json.loads((ASA_SMALL / "tokenizer.json").read_text())
    d["pre_tokenizer"] = {"type": "Whitespace"}
    with pytest.raises(ExportError, match="pre_tokenizer"):
        tokenizer_vocab(json.dumps(d), 12288)


def test_tokenizer_is_padded_to_the_embedding_rows(tiny_tokenizer):
    tokens, types, _, special = tokenizer_vocab(tiny_tokenizer.to_str(), tiny_tokenizer.vocab_size + 3)
    assert len(tokens) == tiny_tokenizer.vocab_size + 3 and tokens[-1].startswith("[PAD")
    assert types[-3:] == [gguf.TokenType.UNUSED] * 3 and special == {"<|endoftext|>": tiny_tokenizer.eos_id}


# ---- against llama.cpp -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def asa_small_gguf(tmp_path_factory):
    if not (ASA_SMALL / "config.json").is_file():
        pytest.skip("asa-small is not installed")
    d = tmp_path_factory.mktemp("gguf")
    return {dt: export(ASA_SMALL, d / f"asa-small-{dt}.gguf", dtype=dt, progress=False)
            for dt in ("float32", "float16")}


def _llama(llama_cpp, path, **kw):
    return llama_cpp.Llama(model_path=str(path), verbose=False, n_threads=1, n_threads_batch=2, **kw)


def test_llama_cpp_tokenizes_exactly_as_we_do(llama_cpp, asa_small_gguf):
    from asa_runtime.tokenizer import Tokenizer

    ours = Tokenizer.from_file(ASA_SMALL / "tokenizer.json")
    llm = _llama(llama_cpp, asa_small_gguf["float16"], vocab_only=True)
    texts = heldout_sentences() + TRICKY
    assert len(texts) > 2000
    mismatches = []
    for text in texts:
        a = ours.encode(text)
        b = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if a != b:
            mismatches.append((text, a, b))
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, first: {mismatches[0]!r}"
    # and back: llama.cpp's detokenizer gives the same text for those ids
    for text in TRICKY[:8]:
        assert llm.detokenize(ours.encode(text), special=True).decode("utf-8") == ours.decode(ours.encode(text))


@pytest.fixture(scope="module")
def dense_reference():
    """Per prompt: its ids and our greedy continuation with every step's logits, from asa-small in float32
    run dense (plan mode `none`: Transformer.forward(ids) with no keys is dense causal SDPA)."""
    from asa_runtime.checkpoint import load_checkpoint

    if not (ASA_SMALL / "config.json").is_file():
        pytest.skip("asa-small is not installed")
    ckpt = load_checkpoint(ASA_SMALL, device="cpu", dtype=torch.float32)
    ckpt.config.plan.mode = "none"
    ckpt.model.cfg.plan.mode = "none"
    out = {}
    for p in prompts():
        ids = ckpt.tokenizer.encode(p)
        out[p] = (ids, _torch_greedy(ckpt.model, ids, GREEDY_STEPS))
    return out


def prompts() -> list[str]:
    ewt = [ln[len("# text = "):] for ln in _xz_lines(DATA / "ud_english_ewt" / "en_ewt-ud-test.conllu.xz")
           if ln.startswith("# text = ")] if (DATA / "ud_english_ewt").is_dir() else []
    fixed = ["The old lighthouse keeper climbed the stairs every evening.",
             "\"Where are you going?\" asked the girl.",
             "In the spring of 1862, the regiment marched north"]
    return fixed + [s for s in (ewt[4:5] + ewt[1200:1201]) if s]


def _torch_greedy(model, ids: list[int], steps: int):
    """Full-recompute greedy decoding: the logits (V,) of every step and the chosen tokens."""
    ids, logits_seq = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids]), last_only=True)[0, -1].float()   # (V,)
            logits_seq.append(logits.numpy())
            ids.append(int(logits.argmax()))
    return ids, logits_seq


def _llama_greedy(llm, ids: list[int], steps: int):
    llm.reset()
    llm.eval(ids)
    ids, logits_seq = list(ids), []
    for _ in range(steps):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)   # (V,)
        logits_seq.append(logits)
        ids.append(int(logits.argmax()))
        llm.eval([ids[-1]])
    return ids, logits_seq


def compare_greedy(ours, theirs, n_prompt: int, tol: float) -> dict:
    """Tokens agree up to the first divergence; every logit gap before it is < tol, and a divergence is
    allowed only where our top-2 margin is within 2*tol (a near-tie that rounding may flip)."""
    (a_ids, a_log), (b_ids, b_log) = ours, theirs
    gaps = []
    for step, (la, lb) in enumerate(zip(a_log, b_log)):
        gaps.append(float(np.abs(la - lb).max()))
        assert gaps[-1] < tol, f"step {step}: max |logit gap| {gaps[-1]:.4g} >= {tol}"
        ta, tb = a_ids[n_prompt + step], b_ids[n_prompt + step]
        if ta != tb:
            margin = float(la[ta] - la[tb])
            assert margin <= 2 * tol, f"step {step}: diverged ({ta} vs {tb}) with our margin {margin:.4g}"
            return {"agreed": step, "max_gap": max(gaps), "diverged_margin": margin}
    return {"agreed": len(a_log), "max_gap": max(gaps), "diverged_margin": None}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_llama_cpp_greedy_equals_ours_dense(llama_cpp, asa_small_gguf, dense_reference, setup):
    dtype, kw, tol = SETUPS[setup]
    llm = _llama(llama_cpp, asa_small_gguf[dtype], n_ctx=256, n_batch=256, logits_all=True, **kw)
    results = {p[:30]: compare_greedy(ours, _llama_greedy(llm, ids, GREEDY_STEPS), len(ids), tol)
               for p, (ids, ours) in dense_reference.items()}
    print(setup, results)
    # compare_greedy failed already unless every step before a divergence was within tol and the divergence
    # itself a near-tie (none was seen in the measurements above); at least 4 prompts agree for >= 32 tokens
    # (without ../shared/data's EWT sentences there are only the 3 fixed prompts: then all of them)
    assert sum(r["agreed"] >= 32 for r in results.values()) >= min(4, len(results)), results
