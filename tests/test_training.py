"""Trainer: model forward/backward per mode, plan == dense masked reference, prepare (tokens + plan cache),
a short training run that lowers the loss, exact resume, DDP with 2 gloo processes, eval and H6."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from asa_runtime.config import MODES, PRESETS, ModelConfig, PlanConfig
from asa_runtime.linguistics.plan import validate_rows
from asa_runtime.model import Transformer
from asa_runtime.tokenizer import Tokenizer
from training.cli import main as cli
from training.evaluate import evaluate
from training.h6 import forward_with_probs, plan_to_mask, random_mask_like, run_h6
from training.prepare import Prepared, prepare_plans, write_prepared
from training.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
CTX = 32


# ---- a stand-in planner (the contract's shape, no linguistics): the last K positions -----------------
def window_plan(n: int, k: int) -> np.ndarray:
    keys = np.full((n, k), -1, dtype=np.int32)
    for i in range(n):
        row = np.arange(max(0, i - k + 1), i + 1)
        keys[i, : len(row)] = row
    return keys


class WindowPlanner:
    def __init__(self, cfg: PlanConfig):
        self.k = cfg.k

    def plan(self, pieces):
        return window_plan(len(pieces), self.k)


def full_plan(n: int) -> np.ndarray:
    """Every earlier position: must equal the dense model."""
    return window_plan(n, n)


# ---- a tiny synthetic corpus with learnable structure -----------------------------------------------
def synthetic_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    subj = ["the cat", "a dog", "the old man", "my sister", "the bird"]
    verb = ["sees", "likes", "chases", "finds", "hears"]
    obj = ["the ball", "a tree", "the river", "her friend", "the house"]
    return [" ".join(f"{rng.choice(subj).capitalize()} {rng.choice(verb)} {rng.choice(obj)}."
                     for _ in range(40)) for _ in range(n)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    train_t, valid_t = synthetic_texts(30, 0), synthetic_texts(4, 1)
    tok = Tokenizer.train(train_t, vocab_size=300)
    docs = {"train": (train_t, sum(len(t.split()) for t in train_t), {}),
            "valid": (valid_t, sum(len(t.split()) for t in valid_t), {})}
    write_prepared(root, tok, docs, CTX, log=lambda *_: None)
    prepare_plans(root, "full", PlanConfig(mode="full", k=8), workers=2, factory=WindowPlanner, progress=False,
                  log=lambda *_: None)
    return root


def _cfg(**kw):
    return ModelConfig(**{**PRESETS["test"], "vocab_size": 320, **kw})


# ---- model ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_forward_backward_every_mode(mode):
    torch.manual_seed(0)
    model = Transformer(_cfg(plan=PlanConfig(mode=mode, k=8)))
    x = torch.randint(0, 320, (2, 20))
    keys = None if mode == "none" else torch.from_numpy(np.stack([window_plan(20, 8)] * 2))
    logits = model(x, keys)
    assert logits.shape == (2, 20, 320)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.roll(-1, 1).flatten())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)


def test_full_plan_equals_dense():
    torch.manual_seed(1)
    model = Transformer(_cfg()).eval()
    x = torch.randint(0, 320, (2, 24))
    keys = torch.from_numpy(np.stack([full_plan(24)] * 2))
    torch.testing.assert_close(model(x, keys), model(x), rtol=1e-4, atol=1e-5)


def test_sparse_plan_equals_dense_masked_reference():
    torch.manual_seed(2)
    model = Transformer(_cfg()).eval()
    x = torch.randint(0, 320, (2, 24))
    rng = np.random.default_rng(0)
    keys = np.full((2, 24, 10), -1, dtype=np.int32)             # random valid plans, different per batch row
    for b in range(2):
        for i in range(24):
            row = np.sort(np.unique(np.append(rng.choice(i + 1, size=min(i + 1, 9), replace=False), i)))
            keys[b, i, : len(row)] = row
    validate_rows(keys)
    keys = torch.from_numpy(keys)
    ref, _ = forward_with_probs(model, x, plan_to_mask(keys, 24))
    torch.testing.assert_close(model(x, keys), ref, rtol=1e-4, atol=1e-5)
    dense_ref, probs = forward_with_probs(model, x)
    torch.testing.assert_close(model(x), dense_ref, rtol=1e-4, atol=1e-5)
    assert probs[0].shape == (2, 4, 24, 24)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(2, 4, 24))


def test_random_mask_same_counts():
    allowed = plan_to_mask(torch.from_numpy(np.stack([window_plan(40, 6)] * 3)), 40)
    rand = random_mask_like(allowed, seed=0)
    assert torch.equal(rand.sum(-1), allowed.sum(-1))
    assert not rand.triu(1).any() and rand.diagonal(dim1=1, dim2=2).all()
    assert not torch.equal(rand, allowed)


# ---- prepare ------------------------------------------------------------------------------------------
def test_prepare_tokens_and_plans(prepared):
    prep = Prepared.open(prepared)
    tok = prep.tokenizer()
    ids = np.asarray(prep.tokens("valid"))
    assert tok.decode(ids[: ids.tolist().index(tok.eos_id)]) == synthetic_texts(4, 1)[0]
    assert prep.windows("train") == (len(prep.tokens("train")) - 1) // CTX
    plans = prep.plans("train", "full")
    assert plans.shape == (prep.windows("train"), CTX, 8) and plans.dtype == np.int16
    assert np.array_equal(plans[0], window_plan(CTX, 8)) and np.array_equal(plans[-1], window_plan(CTX, 8))
    x, y, keys = prep.batch("train", "full", np.array([0, 3]))
    assert np.array_equal(x[1, 1:], y[1, :-1]) and keys.shape == (2, CTX, 8) and keys.dtype == np.int32
    assert prep.plans("valid", "none") is None


# ---- training -----------------------------------------------------------------------------------------
def _train_cfg(prepared, out, **kw):
    base = dict(data=str(prepared), out=str(out), preset="test", batch_size=8, lr=3e-3, min_lr=3e-4, warmup=5,
                max_steps=40, log_every=5, eval_every=20, eval_windows=None, final_eval=("valid",), device="cpu",
                overrides={"n_layer": 1})
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """One short dense and one short ASA run (stand-in plans), shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    return root, {mode: train(_train_cfg(prepared, root / mode, mode=mode, max_steps=30, eval_every=10),
                              log=lambda *_: None) for mode in ("none", "full")}


@pytest.mark.parametrize("mode", ["none", "full"])
def test_short_training_lowers_loss(prepared, trained, mode):
    root, summaries = trained
    s = summaries[mode]
    recs = [json.loads(l) for l in (root / mode / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 1.0
    assert s["final"]["valid"]["ppl_bpe"] < 300 / 4          # far below uniform over the vocabulary
    # the model folder loads and reproduces the final validation loss
    from asa_runtime.checkpoint import load_checkpoint
    ck = load_checkpoint(root / mode / "model")
    assert ck.config.plan.mode == mode and ck.meta["summary"]["steps"] == 30
    res = evaluate(ck.model, Prepared.open(prepared), mode, ["valid"], "cpu")
    assert res["valid"]["loss"] == pytest.approx(s["final"]["valid"]["loss"], rel=1e-5)


def test_compare_table(trained, tmp_path):
    from training.compare import compare_runs, load_run
    root, summaries = trained
    md = compare_runs([root / "none", root / "full"], tmp_path / "cmp")
    assert "| none | none | 0 | 30 |" in md and "| full | full | 0 | 30 |" in md
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    base = load_run(root / "none")
    assert data["baseline_ppl"] == pytest.approx(base["eval"][-1]["ppl"])
    row = {r["mode"]: r for r in data["runs"]}
    assert row["none"]["steps_to_baseline"] is not None and row["none"]["steps_to_baseline"] <= 30
    assert row["full"]["valid_ppl"] == pytest.approx(summaries["full"]["final"]["valid"]["ppl_bpe"])


def test_resume_is_exact(prepared, tmp_path):
    quiet = lambda *_: None  # noqa: E731
    train(_train_cfg(prepared, tmp_path / "a", max_steps=8, eval_every=0), log=quiet)
    train(_train_cfg(prepared, tmp_path / "b", max_steps=8, eval_every=0, time_budget_s=0.0), log=quiet)
    st = json.loads((tmp_path / "b" / "state" / "state.json").read_text())
    assert st["step"] == 1                                     # stopped by the budget after one step
    s = train(_train_cfg(prepared, tmp_path / "b", max_steps=8, eval_every=0, resume=True), log=quiet)
    assert s["steps"] == 8
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "a" / "state" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "state" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_cpu_processes(prepared, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "training.cli", "train", "--data", str(prepared), "--out", str(tmp_path / "ddp"), "--preset", "test",
           "--device", "cpu", "--batch-size", "4", "--max-steps", "6", "--warmup", "2", "--log-every", "3",
           "--eval-every", "3", "--final-eval", "valid", "--mode", "full", "--set", "n_layer=1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 6 and s["tokens"] == 6 * 2 * 4 * CTX


# ---- H6 and the CLI -------------------------------------------------------------------------------------
def test_h6_runs_and_window_attention_scores_high(prepared):
    torch.manual_seed(0)
    prep = Prepared.open(prepared)
    model = Transformer(_cfg(n_layer=2, plan=PlanConfig(mode="none")))
    res = run_h6(model, prep, "full", "valid", windows=4, topk=3, plan_cfg=PlanConfig(mode="full", k=8))
    assert len(res["layers"]) == 2 and 0 < res["density"] < 1
    for l in res["layers"]:
        for name in ("asa", "random"):
            assert all(0.0 <= v <= 1.0 for v in l[name].values())
    # at init attention is near uniform: mass on a mask ~ its density, for ASA and random alike
    assert res["overall"]["asa"]["mass"] == pytest.approx(res["overall"]["random"]["mass"], abs=0.05)


def test_cli_errors_are_one_line(prepared, tmp_path):
    r = CliRunner().invoke(cli, ["train", "--data", str(prepared), "--out", str(tmp_path / "x"),
                                 "--mode", "pos_only", "--preset", "test", "--device", "cpu"])
    assert r.exit_code == 1 and "no 'pos_only' plans" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["eval", "--model", str(prepared), "--data", str(prepared), "--device", "cpu"])
    assert r.exit_code == 1 and "missing config.json" in r.output
    r = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and "not a prepared data folder" in r.output


def _real_planner_or_skip():
    try:
        from asa_runtime.linguistics.planner import Planner
        Planner(PlanConfig(mode="full", k=8)).plan(["The", " cat"])
    except (ImportError, FileNotFoundError, OSError) as e:
        pytest.skip(f"linguistic planner not available: {e}")


def _copy_without_plans(prepared, tmp_path):
    """A copy of the prepared folder whose meta lists no cached plans (tokens kept)."""
    import shutil
    root = tmp_path / "prep"
    shutil.copytree(prepared, root)
    meta = json.loads((root / "meta.json").read_text())
    meta["plans"] = {}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("mode", ["full", "pos_only", "features_only", "random"])
def test_real_planner_cache_obeys_contract_and_trains(prepared, tmp_path, mode):
    """The cached plans of the real planner obey the AttentionPlan contract and drive a training step."""
    _real_planner_or_skip()
    root = _copy_without_plans(prepared, tmp_path)
    prepare_plans(root, mode, PlanConfig(mode=mode, k=16), splits=("valid",), workers=1, progress=False,
                  log=lambda *_: None)
    prep = Prepared.open(root)
    plans = np.asarray(prep.plans("valid", mode)).astype(np.int32)
    validate_rows(plans)
    assert plans.shape[1:] == (CTX, 16) and (plans[..., 1] >= 0).any()
    # equals planning the window directly from its pieces
    from asa_runtime.linguistics.planner import Planner
    pieces = prep.tokenizer().pieces
    w = prep.windows("valid") - 1
    direct = Planner(PlanConfig(mode=mode, k=16)).plan([pieces[t] for t in prep.tokens("valid")[w * CTX:(w + 1) * CTX]])
    assert np.array_equal(plans[w], direct)
    torch.manual_seed(0)
    model = Transformer(_cfg(plan=PlanConfig(mode=mode, k=16)))
    x, y, keys = prep.batch("valid", mode, np.arange(2))
    logits = model(torch.from_numpy(x), torch.from_numpy(keys))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.from_numpy(y).flatten()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_plans_from_another_analyzer_are_redone_and_refused_by_train(prepared, tmp_path):
    """Plans depend on the analyzer's artifacts: a cached plan made with another tagger is planned again,
    and training refuses a folder whose plans do not match the package's analyzer."""
    _real_planner_or_skip()
    from training.train import model_config
    root = _copy_without_plans(prepared, tmp_path)
    cfg = PlanConfig(mode="pos_only", k=16)
    prepare_plans(root, "pos_only", cfg, splits=("valid",), workers=1, progress=False, log=lambda *_: None)
    path = root / "valid.plan.pos_only.i16"
    good = path.read_bytes()
    meta = json.loads((root / "meta.json").read_text())
    assert meta["plans"]["pos_only"]["analyzer"]["artifacts"]
    # pretend the plans came from another tagger, and spoil them
    meta["plans"]["pos_only"]["analyzer"] = {"version": "0", "artifacts": {"tagger.npz": "0" * 64}}
    (root / "meta.json").write_text(json.dumps(meta))
    path.write_bytes(b"\xff" * len(good))
    tc = TrainConfig(data=str(root), out=str(tmp_path / "run"), mode="pos_only", preset="test")
    with pytest.raises(ValueError, match="another analyzer"):
        model_config(tc, Prepared.open(root))
    logs = []
    prepare_plans(root, "pos_only", cfg, splits=("valid",), workers=1, progress=False, log=logs.append)
    assert any("another analyzer" in m for m in logs)
    assert path.read_bytes() == good
    model_config(tc, Prepared.open(root))                      # matches again
