"""bench/latency/common.write_results: both result files, written whole (a temporary file renamed), the folder
made if missing, an earlier result replaced."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "latency"))

import common  # noqa: E402


def test_write_results_writes_both_files_whole(tmp_path):
    out = tmp_path / "new" / "results"
    common.write_results(out, "quant-vm", {"a": 1}, "# old\n")
    common.write_results(out, "quant-vm", {"a": 2}, "# table\n")
    assert json.loads((out / "quant-vm.json").read_text()) == {"a": 2}
    assert (out / "quant-vm.md").read_text() == "# table\n"
    assert sorted(p.name for p in out.iterdir()) == ["quant-vm.json", "quant-vm.md"]     # no temporary left
