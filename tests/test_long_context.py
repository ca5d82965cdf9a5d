"""Long-context evaluation (training/long_context.py) and the far-context measure (training/far_context.py)
on hand-made token streams and tiny random models: what is scored, where targets and gaps are, and that
every method scores the same tokens the way its definition says."""
import math

import numpy as np
import pytest
import torch

from asa_runtime.config import PRESETS, ModelConfig, PlanConfig
from asa_runtime.model import Transformer
from training import far_context as fc
from training.long_context import (Method, book_eval, book_sequences, by_context, by_position, context_windows,
                                   plan_sequences, sequence_nll)

PIECES = ["<eos>", " the", " dog", " ran", ".", " Cas", "aub", "on", " Mary", " said", ",", "\n", " mary",
          " Feather", "stone", "-", "like", " a"]
ID = {p: i for i, p in enumerate(PIECES)}


def enc(*ps):
    return np.array([ID[p] for p in ps], dtype=np.int64)


def test_words_glue_alphabetic_pieces_and_stop_at_punctuation():
    ws = fc.words(enc(" the", " Cas", "aub", "on", ",", " Feather", "stone", "-", "like", "\n", " dog"), PIECES)
    assert [(w.start, w.end, w.text) for w in ws] == [(0, 1, "the"), (1, 4, "Casaubon"), (5, 7, "Featherstone"),
                                                     (8, 9, "like"), (10, 11, "dog")]


def test_targets_names_rare_words_and_gaps():
    filler = [" the", " dog", " ran", "."] * 100
    seq = enc(" Cas", "aub", "on", " Mary", " said", *filler, " Cas", "aub", "on", " said", " Mary", " mary")
    tg = fc.find_targets(seq, PIECES)
    # "Mary" is not a name: "mary" occurs in lower case; " Casaubon" (3 pieces) recurs after 409 tokens
    cas = [t for t in tg if seq[t.start] == ID[" Cas"]]
    assert [t.gap for t in cas] == [0, 405] and cas[1].prev_start == 0 and cas[1].kind == "name"
    assert all(seq[t.start] != ID[" Mary"] for t in tg)


def test_score_targets_separates_first_piece_and_continuation():
    filler = [" the", " dog", " ran", "."] * 100
    seq = enc(" a", " Cas", "aub", "on", *filler, " Cas", "aub", "on")
    tg = fc.find_targets(seq, PIECES)
    nll = np.full(len(seq), 9.0, dtype=np.float32)
    far = tg[1]
    nll[far.start] = 5.0
    nll[far.start + 1: far.end] = 0.5
    s = fc.score_targets(nll, tg)
    b = s["name"][fc.bucket_name(256, 2048)]
    assert b["words"] == 1 and b["first_piece"]["loss"] == 5.0 and b["continuation"]["loss"] == 0.5
    assert b["continuation"]["tokens"] == 2 and math.isclose(b["word_nll"], 6.0)
    assert s["all"]["first mention"]["first_piece"]["loss"] == 9.0


def test_plan_reach_sees_whether_a_row_holds_the_last_mention():
    filler = [" the", " dog", " ran", "."] * 100
    seq = enc(" a", " Cas", "aub", "on", *filler, " Cas", "aub", "on")
    tg = fc.find_targets(seq, PIECES)
    n = len(seq)
    window = np.full((n, 8), -1, dtype=np.int32)
    for i in range(n):
        r = list(range(max(0, i - 7), i + 1))
        window[i, :len(r)] = r
    r = fc.plan_reach(window, sinks=0, targets=tg)
    assert r["max_distance"] == 7 and r["rows_reaching_256"] == 0.0
    assert r["targets_reaching_last_mention"][fc.bucket_name(256, 2048)] == {"share": 0.0, "words": 1}
    reach = window.copy()
    reach[tg[1].start, 0] = 2                  # the row predicting "aub" holds the old "aub"
    r = fc.plan_reach(reach, sinks=0, targets=tg)
    assert r["targets_reaching_last_mention"][fc.bucket_name(256, 2048)]["share"] == 1.0
    assert r["max_distance"] == tg[1].start - 2


def test_method_parse_and_kv_bound():
    assert Method.parse("model") == Method()
    assert Method.parse("window:2048") == Method("window", 2048)
    m = Method.parse("sinks:4+2044")
    assert (m.sinks, m.window, m.name, m.kv_slots) == (4, 2044, "sinks:4+2044", 2048)
    with pytest.raises(ValueError):
        Method.parse("sinks:4")


def test_context_windows_and_book_sequences():
    ids = np.arange(1, 101)
    ws = context_windows(ids, 9, 1000)
    assert len(ws) == 10 and all(len(w) == 10 for w in ws) and ws[1][0] == 11
    assert len(context_windows(ids, 9, 35)) == 3
    stream = np.concatenate([np.arange(1, 51), [0], np.arange(1, 21), [0]])
    seqs = book_sequences(stream, eos_id=0, seq_len=16, min_len=4)
    # book 1 (50 tokens): starts 0, 16, 32, 48 -> lengths 17, 17, 17, 2 (dropped); book 2 (20): 17, 4 (dropped)
    assert [len(s) for s in seqs] == [17, 17, 17, 17]
    assert seqs[1][0] == 17 and seqs[3][0] == 1 and not any(0 in s for s in seqs)


def test_by_position_buckets():
    nlls = [np.ones(10, np.float32), np.full(4, 3.0, np.float32)]
    out = by_position(nlls, edges=(0, 4, 8, 16))
    assert out["0-4"]["tokens"] == 8 and math.isclose(out["0-4"]["loss"], 2.0)
    assert out["4-8"]["tokens"] == 4 and math.isclose(out["8-16"]["loss"], 1.0)


def _dense(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**PRESETS["test"], "vocab_size": 64, "plan": PlanConfig(mode="none")})).eval()


def test_methods_agree_where_their_definitions_do():
    m = _dense()
    seq = np.random.default_rng(0).integers(0, 64, 61)
    full = sequence_nll(m, seq, Method(), None, "cpu")
    wide = sequence_nll(m, seq, Method("window", 100), None, "cpu")
    assert full.shape == (60,) and np.allclose(full, wide, atol=1e-4)
    short = sequence_nll(m, seq, Method("window", 8), None, "cpu")
    assert np.allclose(full[:8], short[:8], atol=1e-4) and not np.allclose(full[8:], short[8:], atol=1e-3)
    sinks = sequence_nll(m, seq, Method("sinks", 6, 2), None, "cpu")
    assert np.allclose(full[:8], sinks[:8], atol=1e-4)


def test_baselines_refuse_a_sparse_model():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**{**PRESETS["test"], "vocab_size": 64, "plan": PlanConfig(mode="local", k=8)}))
    with pytest.raises(ValueError, match="dense"):
        sequence_nll(m, np.arange(10), Method("window", 4), None, "cpu")


def test_by_context_and_book_eval_score_every_token():
    m = _dense()
    ids = np.random.default_rng(1).integers(1, 64, 400)
    res = by_context(m, Method("window", 16), ids, contexts=(32, 64), max_tokens=200, log=lambda *_: None)
    assert res["32"]["windows"] == 6 and res["32"]["tokens"] == 6 * 32 and res["64"]["windows"] == 3
    assert 20 < res["32"]["ppl"] < 200                         # a random model: about the vocabulary size
    pieces = [f" w{i}" for i in range(64)]
    seqs = book_sequences(ids, eos_id=0, seq_len=128, min_len=16)
    out = book_eval(m, Method(), seqs, pieces)
    assert out["tokens"] == sum(len(s) - 1 for s in seqs) and "0-512" in out["by_position"]


def test_plans_with_a_pool_equal_plans_in_process():
    pytest.importorskip("tokenizers")
    from asa_runtime.linguistics.analyzer import Analyzer

    try:
        Analyzer.default()
    except Exception as e:                                    # artifacts not built here
        pytest.skip(f"analyzer artifacts unavailable: {e}")
    pieces = ["The", " dog", " saw", " the", " cat", ".", " It", " ran", " away", "."]
    seqs = [np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 3), np.array([3, 4, 5] * 5)]
    cfg = PlanConfig(mode="full", k=8, window=2, sinks=1)
    a = plan_sequences(cfg, pieces, seqs, workers=2)
    b = plan_sequences(cfg, pieces, seqs, workers=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and a[0].shape == (30, 8)
