"""The card's "as served" section (training/experiments/rope_clamp_card.py): written from the committed probe and
device results, idempotent, and gone when the config turns the clamp off."""
import json
import shutil

from training.experiments import rope_clamp_card as rc


def _copy(tmp_path, model="coh4_w256"):
    """The package card and config, as if they were of `model` (v3, coh4_w256, was evaluated unclamped on the
    device: its card gets the section)."""
    d = tmp_path / "asa-small"
    d.mkdir()
    for f in ("README.md", "config.json"):
        shutil.copy(rc.CARD.parent / f, d / f)
    cfg = json.loads((d / "config.json").read_text())
    cfg["meta"]["asa_v2_model"] = model
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_section_is_written_from_the_results_and_is_idempotent(tmp_path):
    d = _copy(tmp_path)
    once = rc.write(d / "README.md")
    assert rc.write(d / "README.md") == once and once.count(rc.BEGIN) == 1
    served = rc.clamped(2048)
    assert {"8192", "32768"} <= served.keys()
    for L, ppl in served.items():                     # every probe number is in the table, as written
        assert f"| {L} |" in once and f"**{ppl:.2f}**" in once
    assert once.index(rc.BEGIN) < once.index("## Does it use far context?")


def test_no_clamp_no_section(tmp_path):
    d = _copy(tmp_path)
    rc.write(d / "README.md")
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("rope_clamp")
    (d / "config.json").write_text(json.dumps(cfg))
    assert rc.BEGIN not in rc.write(d / "README.md")


def test_a_model_evaluated_as_served_gets_no_section(tmp_path):
    """asa-small v4 (coh4_w256_s1) was evaluated on the device with the clamp it ships with: its card's tables are
    the served numbers, so the section is not added (and an old one is removed)."""
    d = _copy(tmp_path)
    assert rc.BEGIN in rc.write(d / "README.md")
    cfg = json.loads((d / "config.json").read_text())
    cfg["meta"]["asa_v2_model"] = "coh4_w256_s1"
    (d / "config.json").write_text(json.dumps(cfg))
    assert rc.evaluated_as_served("coh4_w256_s1", 2048) and not rc.evaluated_as_served("coh4_w256", 2048)
    assert rc.BEGIN not in rc.write(d / "README.md")
