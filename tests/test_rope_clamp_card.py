"""The card's "as served" section (training/experiments/rope_clamp_card.py): written from the committed probe and
device results, idempotent, and gone when the config turns the clamp off."""
import json
import shutil

from training.experiments import rope_clamp_card as rc


def _copy(tmp_path):
    d = tmp_path / "asa-small"
    d.mkdir()
    for f in ("README.md", "config.json"):
        shutil.copy(rc.CARD.parent / f, d / f)
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
