"""Fingerprint of the plans the analyzer + planner build: a sha256 per mode and policy setting over fixed text.

    python bench/plan/plan_fingerprint.py > before.txt      # on one commit
    python bench/plan/plan_fingerprint.py > after.txt       # on another; `diff` them

A speed change to the analyzer or planner must leave every line identical (asa-small was trained on these plans).
Text: the first 60k asa-small BPE tokens of the ELTeC prose and 20k of WikiText-2 valid (../shared/data).
The last line runs the priority-order path (fast path off)."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan_bench as pb  # noqa: E402

from asa_runtime.config import PlanConfig  # noqa: E402
from asa_runtime.linguistics.planner import IncrementalPlan, Planner  # noqa: E402

MODES = ("full", "pos_only", "features_only", "random", "random_bonds")
POLICIES = ({}, {"stride": 64}, {"k": 32, "window": 8}, {"cross_sentence": False})


def main():
    prose = pb.load_pieces(pb.prose(60000 * 6))[0][:60000]
    wiki = pb.load_pieces(pb.wikitext_text(20000 * 6))[0][:20000]
    for mode in MODES:
        for kw in POLICIES:
            h = hashlib.sha256()
            for pieces in (prose, wiki):
                h.update(Planner(PlanConfig(mode=mode, **kw)).plan(pieces).tobytes())
            print(mode, kw, h.hexdigest()[:16])
    IncrementalPlan.fast_path = False
    h = hashlib.sha256(Planner(PlanConfig(mode="full")).plan(prose[:20000]).tobytes())
    print("full, priority-order path", h.hexdigest()[:16])


if __name__ == "__main__":
    main()
