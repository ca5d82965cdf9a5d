"""The engine: KV-cache decode equals full recomputation (every plan mode), chunked prefill equals one-shot,
greedy determinism, seeds, stop strings, streaming text, context limits, prefix reuse."""
import pytest
import torch
from conftest import PARAGRAPHS, WindowPlanner, build_tiny_checkpoint

from asa_runtime.config import PlanConfig
from asa_runtime.generate import GenerationError, Session, generate, load, stream_generate

PROMPT = PARAGRAPHS[0][:120]


def analyzer_available() -> bool:
    try:
        from asa_runtime.linguistics.planner import Planner

        Planner(PlanConfig(mode="full")).incremental().extend("The")
        return True
    except (OSError, ValueError):
        return False


needs_analyzer = pytest.mark.skipif(not analyzer_available(), reason="analyzer artifacts (tagger, lexicon) not built")


def reference_logits(lm, ids):
    """Full recomputation without a cache: model(all ids, plan of all ids)."""
    model = lm.model
    keys = None
    if not lm.dense:
        keys = torch.from_numpy(lm.planner.plan([lm.tokenizer.pieces[i] for i in ids])).long()[None]
    with torch.no_grad():
        return model(torch.tensor([ids]), keys=keys)[0]                  # (N, V)


def cached_greedy(lm, prompt_ids, n, chunk=512, ctx=128, max_kv=None):
    """Prefill + n greedy decode steps; returns (generated ids, logits of every step (n, V))."""
    s = Session(lm, ctx_size=ctx, prefill_chunk=chunk, max_kv_size=max_kv)
    logits = s.feed(prompt_ids)
    out, got = [], []
    for _ in range(n):
        got.append(logits.clone())
        t = int(logits.argmax())
        out.append(t)
        logits = s.step(t)
    return out, torch.stack(got), s


def check_decode_equals_recompute(lm, n=24):
    ids = lm.tokenizer.encode(PROMPT)
    gen, step_logits, _ = cached_greedy(lm, ids, n)
    ref = reference_logits(lm, ids + gen)
    torch.testing.assert_close(step_logits, ref[len(ids) - 1: len(ids) - 1 + n], atol=1e-4, rtol=1e-4)
    # greedy from the full recomputation picks the same tokens
    assert gen == ref[len(ids) - 1: len(ids) - 1 + n].argmax(-1).tolist()


def test_decode_equals_recompute_dense(tiny_dense_checkpoint):
    check_decode_equals_recompute(load(tiny_dense_checkpoint))


def test_decode_equals_recompute_sparse_standin(tiny_checkpoint):
    check_decode_equals_recompute(load(tiny_checkpoint, planner=WindowPlanner()))


@needs_analyzer
@pytest.mark.parametrize("mode", ["full", "pos_only", "features_only", "random"])
def test_decode_equals_recompute_every_mode(tmp_path, tiny_tokenizer, mode):
    path = build_tiny_checkpoint(tmp_path / mode, tiny_tokenizer, mode=mode)
    check_decode_equals_recompute(load(path))


@pytest.mark.parametrize("which", ["dense", "sparse"])
def test_chunked_prefill_equals_one_shot(tiny_checkpoint, tiny_dense_checkpoint, which):
    lm = load(tiny_dense_checkpoint) if which == "dense" else load(tiny_checkpoint, planner=WindowPlanner())
    ids = lm.tokenizer.encode(PARAGRAPHS[1] + PARAGRAPHS[2])[:100]
    one = Session(lm, ctx_size=128, prefill_chunk=1000).feed(ids, all_logits=True)
    for chunk in (1, 7, 32):
        many = Session(lm, ctx_size=128, prefill_chunk=chunk).feed(ids, all_logits=True)
        # float32 sums in another order only: tolerance relative to the logits' scale
        torch.testing.assert_close(many, one, atol=1e-5 * one.abs().max().item(), rtol=1e-5)
    torch.testing.assert_close(one, reference_logits(lm, ids), atol=1e-4, rtol=1e-4)


def test_greedy_deterministic(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    a = generate(lm, PROMPT, 30, temp=0)
    b = generate(lm, PROMPT, 30, temp=0, seed=123)
    assert a == b and len(a) > 0


def test_seed_reproducible(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    kw = dict(temp=1.5, top_k=0, top_p=1.0, min_p=0.0)
    toks = lambda seed: [r.token for r in stream_generate(lm, PROMPT, 30, seed=seed, stop_at_eos=False, **kw)]
    assert toks(3) == toks(3)
    assert toks(3) != toks(4)


def test_stream_text_is_the_decoded_tokens(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    rs = list(stream_generate(lm, PROMPT, 40, temp=1.0, seed=0, stop_at_eos=False))
    assert [r.finish_reason for r in rs] == [None] * 39 + ["length"]
    assert "".join(r.text for r in rs) == lm.tokenizer.decode([r.token for r in rs])
    last = rs[-1]
    assert last.generation_tokens == 40 and last.prompt_tokens == len(lm.tokenizer.encode(PROMPT))
    assert last.prompt_tps > 0 and last.generation_tps > 0 and last.ttft > 0 and last.peak_memory > 0


def test_stop_string_truncates(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    full = generate(lm, PROMPT, 40, temp=0, stop_at_eos=False)
    stop = full[12:15]
    expect = full[: full.find(stop)]
    rs = list(stream_generate(lm, PROMPT, 40, temp=0, stop=[stop], stop_at_eos=False))
    assert "".join(r.text for r in rs) == expect
    assert rs[-1].finish_reason == "stop"


def test_eos_stops(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    eos = lm.tokenizer.eos_id

    class ForceEos:      # a sampler that emits 3 tokens then EOS
        def __init__(self):
            self.n = 0

        def __call__(self, logits, history):
            self.n += 1
            return eos if self.n == 4 else 100

    rs = list(stream_generate(lm, PROMPT, 40, sampler=ForceEos()))
    assert len(rs) == 4 and rs[-1].finish_reason == "stop" and rs[-1].token == eos
    assert "".join(r.text for r in rs) == lm.tokenizer.decode([100] * 3)


def test_context_limit_stops_generation(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    ids = lm.tokenizer.encode(PROMPT)[:5]
    rs = list(stream_generate(lm, ids, 100, ctx_size=12, temp=0, stop_at_eos=False))
    assert len(rs) == 12 - 5 + 1 and rs[-1].finish_reason == "length"   # the last token is never fed


def test_bad_input(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    with pytest.raises(GenerationError, match="empty prompt"):
        list(stream_generate(lm, "", 5))
    with pytest.raises(GenerationError, match="context"):
        list(stream_generate(lm, PROMPT, 5, ctx_size=8))
    with pytest.raises(GenerationError, match="temp"):
        list(stream_generate(lm, PROMPT, 5, temp=-1))
    with pytest.raises(GenerationError, match="token ids"):
        list(stream_generate(lm, [1, 2, lm.tokenizer.vocab_size], 5))


def test_prepare_reuses_prefix_and_rewinds(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    tok = lm.tokenizer
    a, b, c = tok.encode(PARAGRAPHS[0]), tok.encode(" And then"), tok.encode(" Later, at night")
    s = Session(lm, ctx_size=128)
    s.prepare(a)
    la, n = s.prepare(a + b)
    assert n == len(b)
    s.step(5)
    s.step(6)                                                   # generation beyond the mark
    lc, n = s.prepare(a + c)                                    # diverges after a: rewind to the mark at a
    assert n == len(c) and s.tokens == a + c
    fresh = Session(lm, ctx_size=128)
    torch.testing.assert_close(lc, fresh.prepare(a + c)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(la, Session(lm, ctx_size=128).prepare(a + b)[0], atol=1e-5, rtol=1e-5)
    _, n = s.prepare(c)                                         # nothing in common: start over
    assert n == len(c) and s.tokens == c


class ModulePathBackend:
    """Decodes one token through Transformer.forward (the prefill path, per-query gathers) instead of
    Transformer.decode_one: the reference the one-token path is checked against."""

    def __init__(self, backend):
        self.b = backend
        self.name, self.vocab_size = backend.name, backend.vocab_size
        self.b.union_prefill = False

    def make_cache(self, n_slots):
        return self.b.make_cache(n_slots)

    def prefill(self, *a, **kw):
        return self.b.prefill(*a, **kw)

    def decode(self, cache, token, row, pos, slot, attn_out=None):
        return self.b.prefill(cache, [token], None if row is None else row[None], [pos], [slot])


@pytest.mark.parametrize("variant", ["dense", "sparse", "sparse-int8", "sparse-bf16"])
def test_fast_decode_path_equals_module_path(tiny_checkpoint, tiny_dense_checkpoint, variant):
    """The model's one-token decode (decode_one: 1-D vectors, fused matvecs) equals decoding through its
    batched forward."""
    from asa_runtime.backends.torch_backend import TorchBackend

    ckpt = tiny_dense_checkpoint if variant == "dense" else tiny_checkpoint
    kw = dict(quantize="int8") if variant.endswith("int8") else dict(dtype="bfloat16") if "bf16" in variant else {}
    planner = None if variant == "dense" else WindowPlanner()
    lm = load(ckpt, planner=planner, **kw)
    ids = lm.tokenizer.encode(PROMPT)
    follow = lm.tokenizer.encode(PARAGRAPHS[1])[:16]

    def steps():
        s = Session(lm, ctx_size=128)
        s.feed(ids)
        return torch.stack([s.step(t) for t in follow])            # teacher-forced: same tokens both ways
    fast = steps()
    lm.backend = ModulePathBackend(TorchBackend(lm.model))
    slow = steps()
    tol = 2e-2 if "bf16" in variant else 1e-5
    torch.testing.assert_close(fast, slow, atol=tol * slow.abs().max().item(), rtol=tol)


def test_bf16_kv_cache_halves_memory(tiny_checkpoint, tiny_dense_checkpoint):
    ids = load(tiny_checkpoint).tokenizer.encode(PROMPT)
    out = {}
    for kv in (None, "bfloat16"):
        lm = load(tiny_checkpoint, planner=WindowPlanner(), kv_dtype=kv)
        s = Session(lm, ctx_size=64)
        logits = s.feed(ids)
        out[kv] = (torch.stack([logits] + [s.step(t) for t in ids[:8]]), s.kv_bytes())
    (full, b32), (half, b16) = out[None], out["bfloat16"]
    assert b16 * 2 == b32
    torch.testing.assert_close(half, full, atol=0.05 * full.abs().max().item(), rtol=0.05)
    with pytest.raises(GenerationError, match="sparse"):
        load(tiny_dense_checkpoint, kv_dtype="bfloat16")


@pytest.mark.parametrize("variant", ["sparse", "sparse-int8"])
def test_union_prefill_equals_gather_prefill(tiny_checkpoint, variant):
    """Prefill through one masked SDPA over the chunk's planned slots equals the kernel's per-query gathers."""
    lm = load(tiny_checkpoint, planner=WindowPlanner(), quantize="int8" if "int8" in variant else None)
    ids = lm.tokenizer.encode(PARAGRAPHS[3] + PARAGRAPHS[4])[:120]

    def run(union):
        lm.backend.union_prefill = union
        return Session(lm, ctx_size=128, prefill_chunk=32).feed(ids, all_logits=True)
    a, b = run(True), run(False)
    torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-5)


def test_kv_dtype_auto_is_bf16_for_sparse_fp32_models_only(tiny_checkpoint, tiny_dense_checkpoint):
    """The CLI's default (--kv-dtype auto): a bfloat16 cache where it costs nothing measurable (sparse plan,
    fp32 weights, torch backend); the dense baseline keeps the weights' dtype; the Python default is exact."""
    from asa_runtime.session import Session

    sparse = load(tiny_checkpoint, kv_dtype="auto")
    assert Session(sparse, ctx_size=64).cache.dtype == torch.bfloat16
    assert Session(load(tiny_checkpoint), ctx_size=64).cache.dtype == torch.float32
    assert Session(load(tiny_dense_checkpoint, kv_dtype="auto"), ctx_size=64).cache.dtype == torch.float32
    with pytest.raises(GenerationError):
        load(tiny_checkpoint, kv_dtype="bogus")


def test_prefill_chunk_default_follows_the_device(tiny_checkpoint):
    from asa_runtime.session import DEFAULT_PREFILL_CHUNK, GPU_PREFILL_CHUNK

    assert Session(load(tiny_checkpoint), ctx_size=64).prefill_chunk == DEFAULT_PREFILL_CHUNK == 512
    assert Session(load(tiny_checkpoint), ctx_size=64, prefill_chunk=7).prefill_chunk == 7
    if torch.cuda.is_available():
        assert Session(load(tiny_checkpoint, device="cuda"), ctx_size=64).prefill_chunk == GPU_PREFILL_CHUNK
