"""The long-context probe (training/experiments/rope_clamp_probe.py) on a tiny prepared folder: it scores each
context with each clamp through the runtime's own clamp and evaluation, skips a clamp the context cannot reach,
and a clamp changes the perplexity only once keys lie farther back than it."""
import json

from conftest import PARAGRAPHS, build_tiny_checkpoint
from test_generate import needs_analyzer

from training.experiments import rope_clamp_probe
from training.prepare import write_prepared


@needs_analyzer
def test_probe_scores_each_context_with_each_clamp(tmp_path, tiny_tokenizer):
    model = build_tiny_checkpoint(tmp_path / "model", tiny_tokenizer, mode="full")
    prep = tmp_path / "prep"
    write_prepared(prep, tiny_tokenizer, {"valid": (PARAGRAPHS * 6, 1000, {})}, ctx=64, log=lambda *_: None)
    out = tmp_path / "out"
    rope_clamp_probe.main(["--model", str(model), "--prep", str(prep), "--contexts", "16,96",
                           "--clamps", "none,8,32", "--max-tokens", "400", "--out", str(out)])
    ppl = json.loads((out / "rope_clamp.json").read_text())["ppl"]
    assert set(ppl) == {"16/none", "16/8", "96/none", "96/8", "96/32"}      # 32 >= 16: nothing to clamp there
    assert all(v > 1 for v in ppl.values())
    assert ppl["96/8"] != ppl["96/none"] and ppl["96/32"] != ppl["96/8"]


@needs_analyzer
def test_probe_serves_another_plan_and_a_clamp_without_its_unclamped_twin(tmp_path, tiny_tokenizer):
    """--plan changes the keys each query reads (not the weights); a clamp the context cannot reach still runs
    when 'none' is not asked for (it is the served model there)."""
    model = build_tiny_checkpoint(tmp_path / "model", tiny_tokenizer, mode="full")
    prep = tmp_path / "prep"
    write_prepared(prep, tiny_tokenizer, {"valid": (PARAGRAPHS * 6, 1000, {})}, ctx=64, log=lambda *_: None)
    runs = {}
    for name, plan in (("own", []), ("wide", ["--plan", "window=24,k=40"])):
        out = tmp_path / name
        rope_clamp_probe.main(["--model", str(model), "--prep", str(prep), "--contexts", "16,96", "--clamps", "32",
                               "--max-tokens", "400", "--out", str(out), *plan])
        runs[name] = json.loads((out / "rope_clamp.json").read_text())
    assert set(runs["own"]["ppl"]) == {"16/32", "96/32"}
    assert (runs["wide"]["plan"]["window"], runs["wide"]["plan"]["k"]) == (24, 40)
    assert runs["own"]["plan"]["window"] != 24
    assert runs["wide"]["ppl"]["96/32"] != runs["own"]["ppl"]["96/32"]
