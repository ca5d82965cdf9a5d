"""Write the "as served" section of the shipped asa-small's card: perplexity by context with the RoPE clamp the
package config sets (ModelConfig.rope_clamp), beside the unclamped device evaluation and the dense baselines.

The numbers come from the committed probe runs (training/experiments/rope_clamp_probe.py, CPU; since session 13
it runs the runtime's own clamp, and the GPU evaluation of the shipped model gives the same numbers), the
device evaluation of the shipped model (asa_v2 results) and batch 1's dense baselines. Run after
`asa_v2_ship` (which writes the rest of the card):

    python -m training.experiments.rope_clamp_card

It replaces the text between the two markers below (or inserts it before "## Does it use far context?"). A model
evaluated as served on the device (asa_v2 --serve-clamp: asa-small v4 on) gets no such section: its card's own
tables are the served numbers.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARD = REPO / "asa_runtime" / "models" / "asa-small" / "README.md"
RESULTS = REPO / "training" / "results" / "asa_v2"
PROBES = ("rope_clamp/full", "rope_clamp/full_4k16k")      # the probe runs on the first 128k held-out tokens
BEGIN, END = "<!-- rope_clamp: written by training/experiments/rope_clamp_card.py -->", "<!-- /rope_clamp -->"
DENSE = ("window 2048", "sinks 4 + 2044", "window 512")


def clamped(w: int, results: Path = RESULTS) -> dict[str, float]:
    """context -> perplexity with far keys at distance w, from every committed probe run on 128k tokens."""
    out = {}
    for d in PROBES:
        f = results / d / "rope_clamp.json"
        if f.exists():
            r = json.loads(f.read_text())
            if r.get("max_tokens") != 131072:
                continue
            for key, ppl in r["ppl"].items():
                L, c = key.split("/")
                if c == str(w):
                    out[L] = ppl
    return out


def section(w: int, results: Path = RESULTS, model_dir: Path = CARD.parent) -> str:
    cfg = json.loads((model_dir / "config.json").read_text())
    name = cfg["meta"]["asa_v2_model"]
    res = json.loads((results / "policy_batch" / "asa_v2_results.json").read_text())
    dev = res["models"][name]["methods"]["model"]["by_context"]
    dense = json.loads((results / "batch1.json").read_text())["models"]["dense"]["by_context"]
    cl = clamped(w, results)

    def f(v):
        return "–" if v is None else f"{v:.2f}"

    rows = []
    for L in sorted(dev, key=int):
        served = dev[L]["ppl"] if int(L) <= w else cl.get(L)      # no key is more than w back: unchanged
        rows.append(f"| {L} | {f(dev[L]['ppl'])} | **{f(served)}** | "
                    + " | ".join(f(dense.get(m, {}).get(L)) for m in DENSE) + " |")
    longest = max((L for L in dev if L in cl), key=int, default=None)
    verdict = ""
    if longest:
        mine, best = cl[longest], min(dense[m][longest] for m in DENSE if longest in dense.get(m, {}))
        win512 = dense.get("window 512", {}).get(longest)
        verdict = (f"At {longest} tokens the served model ({mine:.2f}) "
                   + (f"beats the dense twin with a 512-token window ({win512:.2f}) and " if win512 and mine < win512
                      else "")
                   + (f"is {100 * (mine / best - 1):.1f}% behind the best bounded dense baseline ({best:.2f}, "
                      f"which reads up to 2048 keys per query against this plan's {cfg['plan']['k']})."
                      if mine > best else f"beats every bounded dense baseline (best {best:.2f})."))
    far = ""
    served_batch = results / "local_w256" / "asa_v2_results.json"     # session 13: the shipped model, clamped
    if served_batch.is_file():
        b = json.loads(served_batch.read_text())["models"]
        mine = res["models"][name]["methods"]["model"]["far_context"]

        def loss(fc, kind):
            e = fc.get(kind, {}).get("gap > 2048")
            return e["continuation"]["loss"] if e else None
        srv = b["asa_small"]["methods"]["model"]["far_context"]
        ctl = b.get("local_w256", {}).get("methods", {}).get("model", {}).get("far_context", {})
        gpu = json.loads(served_batch.read_text())["setup"].get("gpu", "GPU")
        dev_ctx = b["asa_small"]["methods"]["model"]["by_context"]
        shared = sorted((L for L in cl if L in dev_ctx), key=int)
        same = all(abs(dev_ctx[L]["ppl"] - cl[L]) < 0.005 for L in shared)
        agree = (f"its perplexities by context {'equal' if same else 'differ from'} the column above at "
                 f"{', '.join(shared)}" + ("" if same else ": " + ", ".join(f"{dev_ctx[L]['ppl']:.2f}" for L in shared)))
        far = (f"\n\nFar context as served (the batch in `asa_v2/local_w256/` evaluated this model with its clamp, by the "
               f"runtime on an {gpu}; {agree}): loss on names recurring "
               f"more than 2048 tokens after their last mention {f(loss(srv, 'name'))} nats (unclamped "
               f"{f(loss(mine, 'name'))}; the local-only control at window 256, {f(loss(ctl, 'name'))}), on rare words "
               f"{f(loss(srv, 'rare'))} ({f(loss(mine, 'rare'))}; {f(loss(ctl, 'rare'))}).")
    return f"""{BEGIN}
## As served: far keys scored at distance {w} (rope_clamp {w})

The package config sets `rope_clamp: {w}`: a planned key more than {w} tokens back (a sink, a cohesion mention)
is scored as if exactly {w} back, so no key sits at a relative position the model never saw in training
(`--rope-clamp 0` turns it off; REPORT.md, "Past the training length"). Inside the training length nothing
changes. Same windows as above; "served" past {w} from `rope_clamp_probe` (CPU),
"unclamped" from the device evaluation.

| context | unclamped | served (rope_clamp {w}) | {" | ".join(f"dense twin, {m} (batch 1)" for m in DENSE)} |
|---|---|---|{"---|" * len(DENSE)}
{chr(10).join(rows)}

{verdict}{far}
{END}"""


def evaluated_as_served(name: str, w: int, results: Path = RESULTS) -> bool:
    """Whether a device batch evaluated this model with the clamp it ships with (asa_v2 --serve-clamp, session 15
    on): then the card asa_v2_ship wrote already shows the served numbers, and this section is not needed."""
    for f in results.glob("*/asa_v2_results.json"):
        m = json.loads(f.read_text())["models"].get(name)
        if m and m.get("rope_clamp") == w:
            return True
    return False


def write(card: Path = CARD, results: Path = RESULTS) -> str:
    cfg = json.loads((card.parent / "config.json").read_text())
    w = cfg.get("rope_clamp", 0)
    if w and evaluated_as_served(cfg["meta"]["asa_v2_model"], w, results):
        w = 0                                   # the card's own tables are the served ones
    text = card.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + rest.split(END, 1)[1].lstrip("\n")
    if w:
        anchor = "## Does it use far context?"
        new = section(w, results, card.parent) + "\n\n"
        text = text.replace(anchor, new + anchor, 1) if anchor in text else text.rstrip("\n") + "\n\n" + new
    tmp = card.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(card)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--card", default=str(CARD))
    a = ap.parse_args(argv)
    write(Path(a.card))
    print(f"wrote {a.card}")


if __name__ == "__main__":
    main()
