"""asa_v2_policies: a policy's cost and reach measured without a model, on a tiny prepared folder with the real
planner: a layer-dependent plan's keys per query are the layer-weighted mean of its wide and narrow rows, and
its narrow rows reach no farther than the window; the report lists the committed perplexity of trained
policies and says "not trained" for the others; bad arguments are one-line errors."""
import json

import pytest
from test_asa_v2 import _texts, _words, analyzer_or_skip  # noqa: F401 (fixture)

from asa_runtime.tokenizer import Tokenizer
from training.experiments import asa_v2, asa_v2_policies as P
from training.prepare import write_prepared


@pytest.fixture(scope="module")
def prep(tmp_path_factory, analyzer_or_skip):  # noqa: F811
    root = tmp_path_factory.mktemp("pol") / "prep"
    train_t, valid_t = _texts(4, 0), _texts(3, 1)
    tok = Tokenizer.train(train_t + valid_t, vocab_size=300)
    write_prepared(root, tok, {"train": (train_t, _words(train_t), {}), "valid": (valid_t, _words(valid_t), {})},
                   32, log=lambda *_: None)
    return root


def test_layer_dependent_cost_and_reach(prep):
    s = asa_v2.Setup(prep=prep, seq_len=512, workers=1)
    res = P.measure(["coh4_w64", "coh4_w64_wide2"], s, log=lambda *_: None)
    assert res["books"] >= 1 and res["tokens"] > 500
    full, wide2 = res["policies"]["coh4_w64"], res["policies"]["coh4_w64_wide2"]
    assert wide2["reach"] == full["reach"] and wide2["kv_bound"] == full["kv_bound"]   # same plan, same cache
    nk = wide2["reach_narrow"]["mean_keys"]
    assert nk < full["reach"]["mean_keys"] <= 96
    assert wide2["mean_keys_layers"] == pytest.approx((2 * full["reach"]["mean_keys"] + 6 * nk) / 8)
    assert wide2["reach_narrow"]["max_distance"] <= 63 < full["reach"]["max_distance"]  # sinks + the window only
    md = P.markdown(res, {"coh4_w64": 38.41})
    assert "| coh4_w64 | full k96 w64 s4 coh4 |" in md and "38.41" in md
    assert "narrow k68 but layers 3,7" in md and "not trained" in md


def test_committed_results_give_the_trained_perplexities():
    ppl = P.trained_ppl()
    assert ppl["coh4_w64"] == pytest.approx(38.41, abs=0.01) and ppl["local"] == pytest.approx(43.53, abs=0.01)
    assert ppl["coh4_w64_wide2"] == pytest.approx(38.43, abs=0.01)        # session 10's batch (seeds/)
    assert ppl["coh4_w64_s1"] == pytest.approx(38.09, abs=0.01)
    assert ppl["coh4_w64_m"] == pytest.approx(38.15, abs=0.01)            # the scale point (scale/)


def test_a_batch_installed_in_a_new_folder_is_read(tmp_path):
    (tmp_path / "asa_v2_results.json").write_text(json.dumps({"models": {
        "w64": {"summary": {"final": {"valid": {"ppl_bpe": 41.0}}}}}}))
    (tmp_path / "policy_batch").mkdir()
    (tmp_path / "policy_batch" / "asa_v2_results.json").write_text(json.dumps({"models": {
        "coh4_w128": {"summary": {"final": {"valid": {"ppl_bpe": 37.0}}}},
        "coh4_w64_st256": {"summary": {}}}}))                              # not evaluated: no number
    assert P.trained_ppl(tmp_path) == {"w64": 41.0, "coh4_w128": 37.0}


def test_bad_arguments_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="unknown or dense policy: dense, nope"):
        P.main(["--models", "dense,nope"])
    with pytest.raises(SystemExit, match="no prepared data"):
        P.main(["--models", "coh4_w64", "--prep", str(tmp_path)])
    assert not (tmp_path / "policies.json").exists()
