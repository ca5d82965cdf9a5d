"""asa_v2_frontier: seeds of one policy pool into one point, the Pareto points are the sparse models no cheaper
one beats, the fit recovers a known power law and refuses too few points, and the command writes its files
from a results folder (and refuses one without a dense twin)."""
import json
import math

import pytest

from training.experiments import asa_v2_frontier as F


def _pt(name, keys, ppl):
    return {"name": name, "keys": keys, "ppl": ppl}


def test_seeds_pool_and_models_without_a_cost_are_left_out():
    ppl = {"dense": 35.0, "coh4_w64": 38.4, "coh4_w64_s1": 38.0, "local_w64": 41.0, "coh4_w128": 37.0,
           "coh4_w64_m": 38.1, "not_a_model": 1.0}
    cost = {"coh4_w64": {"keys": 70.9, "kv": 3455}, "local_w64": {"keys": 68.9, "kv": 68},
            "dense": {"keys": 1024.5, "kv": None}}
    long = {"coh4_w64": {8192: 29.0, 32768: 31.0}, "coh4_w64_s1": {32768: 32.0}}
    pts = {p["name"]: p for p in F.pooled(ppl, cost, long)}
    assert set(pts) == {"dense", "coh4_w64", "local_w64"}      # coh4_w128: no cost; _m: another preset
    c = pts["coh4_w64"]
    assert c["models"] == ["coh4_w64", "coh4_w64_s1"] and c["seeds"] == 2
    assert c["ppl"] == pytest.approx(38.2) and (c["ppl_min"], c["ppl_max"]) == (38.0, 38.4)
    assert c["long"] == {32768: pytest.approx(31.5)} and pts["local_w64"]["long"] == {}
    assert c["long_range"] == {32768: (31.0, 32.0)}
    assert any("31.50** (31.00-32.00)" in r for r in F.long_table([c], {}))     # the best is bold, then its range
    assert [p["name"] for p in F.pooled(ppl, cost)] == ["local_w64", "coh4_w64", "dense"]   # by keys
    # a seed evaluated as served (RoPE clamp) is not averaged with one evaluated as trained: the served one wins
    long["coh4_w64_s1"] = {8192: 27.0, 32768: 27.5, "clamp": 2048}
    c = {p["name"]: p for p in F.pooled(ppl, cost, long)}["coh4_w64"]
    assert c["long"] == {8192: 27.0, 32768: 27.5} and (c["long_seeds"], c["long_clamp"], c["seeds"]) == (1, 2048, 2)
    row = next(r for r in F.long_table([c], {}) if "coh4" in r or "cohesion" in r)
    assert "RoPE clamp 2048; 1 of 2 seeds" in row


def test_pareto_keeps_only_points_no_cheaper_one_beats():
    pts = [_pt("a", 20, 44), _pt("b", 26, 43), _pt("c", 69, 41), _pt("d", 70, 38), _pt("e", 80, 39),
           _pt("dense", 1024, 35)]
    assert [p["name"] for p in F.pareto(pts)] == ["a", "b", "c", "d"]        # e: d is cheaper and better


def test_fit_recovers_a_power_law_and_refuses_too_little():
    dense = 35.0
    pts = [_pt(str(k), k, dense * (1 + 3.0 * k ** -0.8)) for k in (20, 50, 120, 300)]
    f = F.fit(pts, dense)
    assert f["exponent"] == pytest.approx(-0.8) and f["rms_log_residual"] < 1e-9
    assert f["keys_at_target"] == pytest.approx((F.TARGET_GAP / 3.0) ** (1 / -0.8), rel=1e-6)
    assert F.fit(pts[:2], dense) is None                                        # two points
    assert F.fit([_pt("a", 60, 40), _pt("b", 70, 39), _pt("c", 80, 38)], dense) is None   # < 2x range of K
    rising = [_pt(str(k), k, dense * (1 + 0.01 * k ** 0.5)) for k in (20, 50, 120)]
    assert F.fit(rising, dense) is None


def test_command_writes_the_table_and_refuses_without_dense(tmp_path):
    res = tmp_path / "results"
    (res / "policies").mkdir(parents=True)
    (res / "batch1.json").write_text(json.dumps({"models": {
        "dense": {"valid_ppl": 35.7, "by_context": {"no window": {"32768": 203.8},
                                                    "window 512": {"8192": 27.2, "32768": 27.3}}},
        "local": {"valid_ppl": 43.5, "mean_keys": 21.0, "kv_max": 20},
        "asa_small": {"valid_ppl": 43.1, "mean_keys": 26.5, "kv_max": 107, "label": "asa-small v1"}}}))
    (res / "policies" / "policies.json").write_text(json.dumps({"policies": {
        "coh4_w64": {"mean_keys_layers": 70.9, "kv_bound": {"max": 3455}}}}))
    (res / "b2").mkdir()
    (res / "b2" / "asa_v2_results.json").write_text(json.dumps({"models": {
        "coh4_w64": {"summary": {"final": {"valid": {"ppl_bpe": 38.4}}},
                     "methods": {"model": {"by_context": {"8192": {"ppl": 29.5}, "32768": {"ppl": 31.0}}}}},
        "coh4_w64_s1": {"summary": {"final": {"valid": {"ppl_bpe": 38.0}}},
                        "methods": {"model": {"by_context": {"32768": {"ppl": 32.0}}}}},
        # re-evaluated shipped model (no training summary): its name means v1 in batch 1, so it is skipped
        "asa_small": {"methods": {"model": {"by_context": {"32768": {"ppl": 31.0}}}}}}}))
    out = tmp_path / "out"
    F.main(["--results", str(res), "--out", str(out), "--no-plot"])
    md = (out / "frontier.md").read_text()
    assert "| asa-small v1 | 26.5 | 107 | 43.10 | 1 | +20.7% | yes |" in md
    assert "| 70.9 | 3,455 | 38.20 | 2 (38.00-38.40) | +7.0% | yes |" in md
    assert "Closest to the dense twin" in md and "Log-linear fit through the 3" in md
    # past the training length: 8k only where every seed has it; the best figure per column in bold
    assert "| dense twin, window 512 | 512 | **27.20** | **27.30** |" in md
    assert "| 3,455 | – | 31.50 (31.00-32.00) |" in md
    assert "asa-small v1 | 107 | –" not in md                              # v1 has no long-context figures here
    fit = json.loads((out / "frontier.json").read_text())["fit"]
    assert math.exp((math.log(F.TARGET_GAP) - fit["intercept"]) / fit["exponent"]) == pytest.approx(
        fit["keys_at_target"])
    (res / "batch1.json").unlink()
    with pytest.raises(SystemExit, match="no dense twin"):
        F.main(["--results", str(res), "--out", str(tmp_path / "none"), "--no-plot"])
    assert not (tmp_path / "none").exists()


def test_dense_baselines_pool_over_the_dense_twins_seeds(tmp_path):
    """batch 1's dense twin (seed 0) and a later batch's dense_s1 pool into one baseline with its range; a
    medium-preset dense model does not."""
    (tmp_path / "batch1.json").write_text(json.dumps({"models": {"dense": {"by_context": {
        "window 2048": {"8192": 26.82, "32768": 26.81}, "sinks 4 + 2044": {"8192": 26.81, "32768": 26.81}}}}}))
    def by(v8, v32):
        return {"by_context": {"8192": {"ppl": v8}, "32768": {"ppl": v32}}}
    batch = tmp_path / "seeds3"
    batch.mkdir()
    (batch / "asa_v2_results.json").write_text(json.dumps({"models": {
        "dense_s1": {"summary": {"final": True}, "methods": {"model": by(90.0, 200.0), "window:2048": by(26.92, 26.91),
                                                             "sinks:4+2044": by(26.95, 26.97)}},
        "dense_m": {"summary": {"final": True}, "methods": {"model": by(80.0, 190.0), "window:2048": by(20.0, 20.0)}}}}))
    models, base = F.long_context(tmp_path)
    w = base["dense twin, window 2048"]
    assert w["seeds"] == 2 and w["kv"] == 2048
    assert w[8192] == pytest.approx(26.87) and w["range"][32768] == (26.81, 26.91)
    s = base["dense twin, sinks 4 + 2044"]
    assert s[32768] == pytest.approx(26.89) and s["seeds"] == 2
    assert models["dense_s1"] == {8192: 90.0, 32768: 200.0}
    row = next(r for r in F.long_table([], base) if "window 2048" in r)
    assert "(2 seeds)" in row and "26.87** (26.82-26.92)" in row


def test_a_shipped_seed_evaluated_as_served_counts_for_that_seed(tmp_path):
    """session 13's batch (folder local_w256) re-evaluated the shipped v3 = coh4_w256 seed 0 served with clamp
    2048: those figures replace the seed's as-trained ones from the batch that trained it."""
    def by(v8, v32):
        return {"by_context": {"8192": {"ppl": v8}, "32768": {"ppl": v32}}}
    for folder, models in (("policy_batch", {"coh4_w256": {"summary": {"final": True}, "methods": {"model": by(28.5, 29.4)}}}),
                           ("local_w256", {"asa_small": {"methods": {"model": by(26.96, 27.01)}}})):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "asa_v2_results.json").write_text(json.dumps({"models": models}))
    models, _ = F.long_context(tmp_path)
    assert models == {"coh4_w256": {8192: 26.96, 32768: 27.01, "clamp": 2048}}
