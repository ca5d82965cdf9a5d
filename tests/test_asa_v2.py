"""The asa-small v2 driver (training/experiments/asa_v2.py) end to end on a tiny configuration: tiny data,
the real planner, three models trained for a few steps, the shipped model replaced by a tiny one, every
evaluation and the report; then resuming finds everything done and redoes nothing."""
import json
import random
import tarfile

import numpy as np
import pytest

from asa_runtime.tokenizer import Tokenizer
from training.experiments import asa_v2
from training.prepare import write_prepared

CTX = 32


def _texts(n, seed):
    rng = random.Random(seed)
    names = ["Dorothea", "Casaubon", "Featherstone", "Lydgate"]
    subj = ["the cat", "a dog", "the old man", "my sister"]
    verb = ["sees", "likes", "chases", "finds"]
    return [" ".join(f"{rng.choice(subj + names).capitalize()} {rng.choice(verb)} {rng.choice(names)}."
                     for _ in range(60)) for _ in range(n)]


def _words(texts):
    return sum(len(t.split()) for t in texts)


@pytest.fixture(scope="module")
def analyzer_or_skip():
    from asa_runtime.linguistics.analyzer import Analyzer

    try:
        Analyzer.default()
    except Exception as e:                                  # artifacts not built here
        pytest.skip(f"analyzer artifacts unavailable: {e}")


@pytest.fixture(scope="module")
def done(tmp_path_factory, analyzer_or_skip):
    root = tmp_path_factory.mktemp("v2")
    prep = root / "prep"
    train_t, valid_t = _texts(12, 0), _texts(2, 1)
    tok = Tokenizer.train(train_t, vocab_size=300)
    write_prepared(prep, tok, {"train": (train_t, _words(train_t), {}),
                                  "valid": (valid_t, _words(valid_t), {})}, CTX, log=lambda *_: None)
    from conftest import build_tiny_checkpoint

    shipped = build_tiny_checkpoint(root / "shipped", tok, mode="full", k=8, window=2, sinks=1)
    s = asa_v2.Setup(prep=prep, runs=root / "runs", carry=root / "carry", max_steps=3,
                     train_args=("--preset", "test", "--batch-size", "2", "--warmup", "1", "--eval-every", "0",
                                 "--log-every", "1", "--ckpt-every", "2", "--final-eval", "valid", "--device", "cpu"),
                     contexts=(16, 32, 64), max_tokens=200, seq_len=64, dense_windows=(16,), shipped_dir=str(shipped),
                     workers=1)
    asa_v2.start(s, call_s=0, foreground=True)
    return s


@pytest.mark.slow       # ~30 s: three trainings and four evaluations on CPU
def test_every_model_is_trained_and_evaluated(done):
    st = json.loads((done.runs / "state.json").read_text())
    assert st["status"] == "done"
    assert {n: m["status"] for n, m in st["models"].items()} == {n: "trained" for n in asa_v2.DEFAULT_TRAIN}
    for n in asa_v2.DEFAULT_TRAIN:
        summ = json.loads((done.runs / n / "summary.json").read_text())
        assert summ["steps"] == 3
    cfg = json.loads((done.runs / "w64" / "model" / "config.json").read_text())
    assert cfg["plan"]["window"] == 64 and cfg["plan"]["k"] == 96 and cfg["plan"]["mode"] == "full"
    assert json.loads((done.runs / "local" / "model" / "config.json").read_text())["plan"]["mode"] == "local"


@pytest.mark.slow       # ~30 s: three trainings and four evaluations on CPU
def test_evaluations_cover_contexts_baselines_positions_and_far_context(done):
    res = json.loads((done.runs / "asa_v2_results.json").read_text())
    assert set(res["models"]) == {"dense", "local", "w64", "asa_small"}
    dense = res["models"]["dense"]["methods"]
    assert set(dense) == {"model", "window:16", "sinks:4+12"}
    assert dense["sinks:4+12"]["kv_slots"] == 16 and dense["model"]["kv_slots"] is None
    for r in res["models"].values():
        for m in r["methods"].values():
            assert set(m["by_context"]) == {"16", "32", "64"}
            assert all(v["ppl"] > 1 for v in m["by_context"].values())
            assert m["by_position"] and m["tokens"] > 0
            assert "all" in m["far_context"]
    # the local plan reaches no farther than its window and own word; asa-small (tiny, window 2) has bonds
    local = res["models"]["local"]["reach"]
    assert local["max_distance"] <= 16 + 40 and local["mean_keys"] <= 64
    assert res["models"]["asa_small"]["plan"]["mode"] == "full"
    assert res["models"]["local"]["kv_bound"]["max"] > 0
    # H6 on the dense model only, one entry per plan, shares in [0, 1], per layer
    h6 = res["models"]["dense"]["h6"]
    assert set(h6) == set(asa_v2.H6_PLANS) and not any("h6" in r for n, r in res["models"].items() if n != "dense")
    small = h6["asa_small"]                                   # window 16 < CTX: rows the plan does not cover
    assert small["windows"] > 0 and small["rows"] > 0 and 0 < small["density"] < 1
    assert all(0 <= small["overall"][m][k] <= 1 for m in ("asa", "random") for k in ("mass", "count", "topk"))
    assert len(small["layers"]) == json.loads((done.runs / "dense" / "model" / "config.json").read_text())["n_layer"]
    assert h6["coh4_w256"]["rows"] == 0                       # window 256 > CTX: it covers every row, says nothing


@pytest.mark.slow       # ~30 s: three trainings and four evaluations on CPU
def test_report_and_finish_files(done, tmp_path):
    md = (done.runs / "asa_v2.md").read_text()
    assert "Perplexity by context length" in md and "dense, sinks 4 + 12" in md and "Far context" in md
    assert "H6: where a dense model already attends" in md and "covers every row" in md
    assert "NOT asa-small's 5170" in md                    # 3 steps: the report says it is not comparable
    out = tmp_path / "out"
    asa_v2.finish(done, out, wait_s=0)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["asa_v2.md", "asa_v2_results.json", "runs.tar.gz"]    # <= 8 files come back
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert "dense/metrics.jsonl" in names and "state.json" in names
    dst = tmp_path / "installed"
    asa_v2.install(out, dst)
    assert (dst / "dense_metrics.jsonl").is_file() and (dst / "asa_v2.md").is_file()
    asa_v2.main(["install", "--from", str(out), "--to", str(tmp_path / "batch3")])   # a later batch's folder
    assert (tmp_path / "batch3" / "dense_metrics.jsonl").is_file()


@pytest.mark.slow       # ~30 s: three trainings and four evaluations on CPU
def test_start_again_redoes_nothing(done):
    before = {p: p.stat().st_mtime for p in (done.runs / "eval").glob("*.json")}
    metrics = (done.runs / "dense" / "metrics.jsonl").read_text()
    asa_v2.start(done, call_s=0, foreground=True)
    assert {p: p.stat().st_mtime for p in (done.runs / "eval").glob("*.json")} == before
    assert (done.runs / "dense" / "metrics.jsonl").read_text() == metrics


def test_setup_round_trips_and_specs_change_one_thing(tmp_path):
    s = asa_v2.Setup(prep=tmp_path / "p", runs=tmp_path / "r", train=("dense", "local"), contexts=(16, 32))
    s.save()
    assert asa_v2.Setup.load(tmp_path / "r") == s
    base = asa_v2.MODELS["asa_small"].plan_config().to_dict()
    local = asa_v2.MODELS["local"].plan_config().to_dict()
    assert {k for k in base if base[k] != local[k]} == {"mode"}
    w64 = asa_v2.MODELS["w64"].plan_config().to_dict()
    assert {k: w64[k] for k in base if base[k] != w64[k]} == {"window": 64, "k": 96}
    assert asa_v2.Setup().evaluated() == ["dense", "local", "w64", "asa_small"]
    assert asa_v2.Setup(shipped=False).evaluated() == ["dense", "local", "w64"]


@pytest.mark.slow       # ~10 s: one evaluation of the w64 model on CPU
def test_serve_clamp_evaluates_full_models_as_served(done, tmp_path):
    """--serve-clamp: a trained full-mode model is evaluated with the clamp (the far keys it changes make the
    long contexts differ from the model as trained; inside the clamp nothing changes); the setup keeps it."""
    import dataclasses
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(done.runs, runs)
    s = dataclasses.replace(done, runs=runs, serve_clamp=8, shipped=False)
    s.save()
    assert asa_v2.Setup.load(runs).serve_clamp == 8 and not asa_v2.Setup.load(runs).shipped
    plain = json.loads((done.runs / "eval" / "w64.json").read_text())
    served = asa_v2.evaluate_model(s, "w64", device="cpu")
    assert plain["rope_clamp"] == 0 and served["rope_clamp"] == 8
    a, b = plain["methods"]["model"]["by_context"], served["methods"]["model"]["by_context"]
    assert a["16"]["ppl"] != b["16"]["ppl"] or a["64"]["ppl"] != b["64"]["ppl"]
    assert asa_v2.evaluate_model(s, "local", device="cpu")["rope_clamp"] == 0     # only full-mode models


def test_second_seeds_and_the_scale_point_change_only_what_they_say(tmp_path):
    """The seed-1 finalists differ from theirs only in the seed; the medium pair's trainer options (parsed by
    the real CLI, where the last value of an option wins) are the medium preset, its learning rate and steps."""
    from asa_runtime.config import PRESETS, ModelConfig
    from asa_runtime.model import Transformer
    from training.cli import train

    M = asa_v2.MODELS
    for a, b in (("coh4_w64_s1", "coh4_w64"), ("local_w64_s1", "local_w64"), ("coh4_w64_m", "coh4_w64"),
                 ("coh4_w64_m3", "coh4_w64")):
        assert M[a].plan_config() == M[b].plan_config()
    assert (M["coh4_w64_s1"].seed, M["local_w64_s1"].seed, M["coh4_w64_m"].seed) == (1, 1, 0)
    assert (M["coh4_w256_m3"].plan, M["coh4_w256_m3"].args) == (M["coh4_w256"].plan, M["dense_m3"].args)
    for a, b, seed in (("dense", "dense_s1", 1), ("coh8_w256", "coh8_w256_s1", 1), ("coh4_w256", "coh4_w256_s2", 2)):
        assert (M[b].mode, M[b].plan, M[b].args, M[b].seed) == (M[a].mode, M[a].plan, M[a].args, seed)
    s = asa_v2.Setup(prep=tmp_path / "asa_prep", runs=tmp_path / "asa_v2")   # a clean clone has no runs/
    for n in ("coh4_w64_m", "dense_m", "coh4_w64_s1", "coh4_w64_m3", "dense_m3"):
        asa_v2.policy_path(s, M[n]).mkdir(parents=True, exist_ok=True)          # the CLI checks --data exists
    for n, preset, lr, steps, seed in (("coh4_w64_m", "medium", 1e-3, 4000, 0), ("dense_m", "medium", 1e-3, 4000, 0),
                                       ("coh4_w64_m3", "medium", 1e-3, 2300, 0), ("dense_m3", "medium", 1e-3, 2300, 0),
                                       ("coh4_w64_s1", "small", 1.5e-3, asa_v2.ASA_SMALL_STEPS, 1)):
        ctx = train.make_context("train", asa_v2.train_cmd(s, M[n])[4:])
        assert (ctx.params["preset"], ctx.params["lr"], ctx.params["max_steps"], ctx.params["seed"]) == \
            (preset, lr, steps, seed)
        assert ctx.params["mode"] == M[n].mode
    n = sum(p.numel() for p in Transformer(ModelConfig(**{**PRESETS["medium"], "vocab_size": 12288})).parameters())
    assert 40e6 < n < 60e6                                # "about 50M parameters", one size above small (18.9M)


def test_unknown_model_is_refused():
    with pytest.raises(SystemExit, match="unknown model"):
        asa_v2.main(["start", "--train", "dense,nonsense"])


@pytest.mark.slow       # uses the module's trained runs
def test_export_best_and_ship_only_a_better_model(done, tmp_path):
    import shutil

    from asa_runtime.checkpoint import load_checkpoint
    from training.experiments import asa_v2_ship

    out = tmp_path / "out"
    asa_v2.finish(done, out, wait_s=0, export="best")
    exported = sorted(p.name for p in (out / "asa-small").iterdir())
    assert exported[0] == "config.json" and all(n.endswith(".safetensors") for n in exported[1:])
    assert len(exported) + 3 <= 8                               # what a device call can bring back
    cfg = json.loads((out / "asa-small" / "config.json").read_text())
    assert cfg["meta"]["asa_v2_model"] == "w64"                # the one trained ASA model (local is a control)
    assert cfg["plan"]["window"] == 64
    pkg = tmp_path / "pkg" / "asa-small"                       # stands in for the package's folder
    shutil.copytree(done.shipped_dir, pkg)
    before = sorted(p.name for p in pkg.iterdir())
    with pytest.raises(SystemExit, match="does not beat"):      # 3 steps: far worse than asa-small v1
        asa_v2_ship.ship(out, done.prep, pkg, results=tmp_path / "res")
    assert sorted(p.name for p in pkg.iterdir()) == before      # refused: nothing touched
    asa_v2_ship.ship(out, done.prep, pkg, force=True, results=tmp_path / "res")
    ck = load_checkpoint(pkg, device="cpu")
    assert ck.config.plan.window == 64 and ck.meta["asa_v2_model"] == "w64"
    card = (pkg / "README.md").read_text()
    assert "asa-small (v2)" in card and "Perplexity by context length" in card and "far context" in card
    assert "(batch 1)" in card and "Samples" in card
    assert not (pkg.parent / "asa-small.new").exists() and not (pkg.parent / "asa-small.old").exists()


def test_report_shows_a_layer_dependent_plan():
    """The report of a batch with a layer-dependent model (the committed batch-2 results, coh4_w64 relabelled
    as coh4_w64_wide2): its plan column names the narrow part, its keys column the mean over the layers."""
    import copy

    res = json.loads((asa_v2.REPO / "training" / "results" / "asa_v2" / "asa_v2_results.json").read_text())
    m = copy.deepcopy(res["models"]["coh4_w64"])
    m.update(name="coh4_w64_wide2", label=asa_v2.MODELS["coh4_w64_wide2"].label, mean_keys_layers=68.7,
             plan=asa_v2.MODELS["coh4_w64_wide2"].plan_config().to_dict())
    res["models"]["coh4_w64_wide2"] = m
    md = asa_v2.markdown(res)
    row = next(line for line in md.splitlines() if line.startswith(f"| {m['label']} |"))
    assert "full k96 w64 s4 coh4, narrow k68 but layers 3,7" in row and "| 68.7 |" in row
    row = next(line for line in md.splitlines() if line.startswith(f"| {res['models']['coh4_w64']['label']} |"))
    assert "| 70.9 |" in row and "narrow" not in row


def test_pack_refuses_a_training_slice(tmp_path):
    """A prep made with --train-words N (asa_v2_policies only reads the held-out split) is not carried to train."""
    (tmp_path / "meta.json").write_text(json.dumps({"settings": {"train_words": 20000}}))
    with pytest.raises(SystemExit, match="20,000-word training slice"):
        asa_v2.pack(asa_v2.Setup(prep=tmp_path, carry=tmp_path / "carry"))
    assert not (tmp_path / "carry").exists()


def test_export_best_picks_a_model_of_the_batch_size_only():
    """'best' is the trained ASA model of the batch's own size with the lowest held-out perplexity: not a
    control, not dense, not the shipped model, not the scale point's larger model (asa-small's size only)."""
    from training.experiments.asa_v2_ship import pick

    def m(mode, ppl, preset="small"):
        return {"plan": {"mode": mode}, "summary": {"preset": preset, "final": {"valid": {"ppl_bpe": ppl}}}}

    res = {"setup": {"train_args": list(asa_v2.TRAIN_ARGS)},
           "models": {"dense": m("none", 30.0), "local_w64": m("local", 31.0), "coh4_w64_m": m("full", 32.0, "medium"),
                      "coh4_w64": m("full", 38.4), "coh4_w64_s1": m("full", 38.1)}}
    assert pick(res, "best") == "coh4_w64_s1"
    assert pick(res, "coh4_w64_m") is None and pick(res, "coh4_w64") == "coh4_w64"
    res["setup"]["train_args"] = ["--preset", "test"]            # a batch of another size picks among its own
    assert pick(res, "best") is None


def test_export_best_prefers_a_model_the_ship_rule_accepts():
    """Given the shipped model's perplexity, 'best' is the best model that could ship (session 12: the best at
    2048 lost at 32k); when none could, the best at 2048 all the same."""
    from training.experiments.asa_v2_ship import pick

    def m(ppl, at32k):
        return {"plan": {"mode": "full"}, "summary": {"preset": "small", "final": {"valid": {"ppl_bpe": ppl}}},
                "methods": {"model": {"by_context": {"32768": {"ppl": at32k}}}}}

    res = {"setup": {"train_args": list(asa_v2.TRAIN_ARGS)},
           "models": {"asa_small": {"plan": {"mode": "full"}, "methods": {"model": {"by_context": {"32768": {"ppl": 31.3}}}}},
                      "coh4_w256": m(36.0, 29.4), "coh4_w256_wide2": m(35.9, 32.6), "coh4_w128": m(36.9, 31.0)}}
    assert pick(res, "best") == "coh4_w256_wide2"                # no shipped model given: 2048 alone
    assert pick(res, "best", 38.41) == "coh4_w256"               # the best that beats the shipped one at 32k too
    assert pick(res, "best", 35.0) == "coh4_w256_wide2"          # none beats 35.0: the best at 2048


def test_a_model_ships_only_if_better_at_2048_and_at_the_longest_context():
    """It must beat the shipped held-out perplexity, and not lose at the longest context the batch evaluated
    both at (the batch re-evaluates the shipped model as asa_small)."""
    from training.experiments.asa_v2_ship import refusal

    def m(ppl, by_context):
        return {"summary": {"final": {"valid": {"ppl_bpe": ppl}}},
                "methods": {"model": {"by_context": {str(c): {"ppl": v} for c, v in by_context.items()}}}}

    res = {"models": {"asa_small": {"methods": {"model": {"by_context": {"2048": {"ppl": 29.0},
                                                                        "32768": {"ppl": 31.3}}}}},
                      "coh4_w128": m(37.5, {2048: 28.5, 8192: 28.0, 32768: 31.0}),
                      "coh4_w256_wide2": m(37.0, {2048: 28.2, 32768: 32.4}),
                      "coh4_w64_st256": m(38.6, {2048: 29.5, 32768: 30.0})}}
    assert refusal(res, "coh4_w128", 38.41) is None
    assert "32768 tokens is worse" in refusal(res, "coh4_w256_wide2", 38.41)   # better at 2048, worse at 32k
    assert "does not beat" in refusal(res, "coh4_w64_st256", 38.41)
    del res["models"]["asa_small"]                                              # no re-evaluation: 2048 decides
    assert refusal(res, "coh4_w256_wide2", 38.41) is None


def test_a_batch_without_the_shipped_model_borrows_its_evaluation_only_if_it_is_that_model(tmp_path):
    """ship --shipped-eval: a --no-shipped batch takes the shipped model's columns from another batch's results,
    and only when that evaluation is of the shipped plan and RoPE clamp (else the comparison is of another model)."""
    from training.experiments.asa_v2_ship import with_shipped_eval

    plan = {"mode": "full", "k": 288, "window": 256}
    shipped_cfg = {"plan": plan, "rope_clamp": 2048}
    res = {"models": {"coh4_w256_s1": {"plan": plan}}}
    with pytest.raises(SystemExit, match="--shipped-eval"):
        with_shipped_eval(res, shipped_cfg, None)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"models": {"asa_small": {"plan": plan, "by": 1}}}))
    got = with_shipped_eval(res, shipped_cfg, other)
    assert got["models"]["asa_small"]["by"] == 1 and got["models"]["asa_small"]["evaluated_in"]
    assert "asa_small" not in res["models"]                                   # the batch's dict is not edited
    other.write_text(json.dumps({"models": {"asa_small": {"plan": {**plan, "window": 64}}}}))
    with pytest.raises(SystemExit, match="not the shipped model"):
        with_shipped_eval(res, shipped_cfg, other)
    other.write_text(json.dumps({"models": {"asa_small": {"plan": plan, "rope_clamp": 0}}}))
    with pytest.raises(SystemExit, match="not the shipped model"):
        with_shipped_eval(res, shipped_cfg, other)
    own = {"models": {**res["models"], "asa_small": {"plan": plan}}}
    assert with_shipped_eval(own, shipped_cfg, None) is own                   # its own evaluation wins


def test_the_card_says_when_the_shipped_model_was_picked_among_seeds(tmp_path):
    """seed_note: another trained seed of the same plan makes the card say the pick was made on the books it
    reports; a model with one trained seed gets no such sentence."""
    from training.experiments.asa_v2_ship import seed_note

    def batch(folder, models):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "asa_v2_results.json").write_text(json.dumps({"models": {
            n: {"summary": {"final": {"valid": {"ppl_bpe": v}}}} for n, v in models.items()}}))

    batch("a", {"coh4_w256": 36.0, "coh8_w256": 35.7})
    assert seed_note("coh4_w256", tmp_path) == "" and seed_note("not_a_model", tmp_path) == ""
    batch("b", {"coh4_w256_s1": 35.72, "local_w256_s1": 36.9})
    note = seed_note("coh4_w256_s1", tmp_path)
    assert "2 trained seeds" in note and "seed 0: 36.00, seed 1: 35.72" in note and "partly that choice" in note
    assert seed_note("coh8_w256", tmp_path) == ""


def test_dense_windows_option_reaches_the_setup_and_refuses_bad_values(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(asa_v2, "start", lambda s, call_s, fg: seen.setdefault("s", s))
    asa_v2.main(["start", "--runs", str(tmp_path / "r"), "--train", "dense_s1", "--dense-windows", "2048"])
    assert seen["s"].dense_windows == (2048,) and seen["s"].train == ("dense_s1",)
    for bad in ("2048,x", "4"):
        with pytest.raises(SystemExit, match="--dense-windows"):
            asa_v2.main(["start", "--runs", str(tmp_path / "r"), "--dense-windows", bad])
