"""The shipped default model: it loads offline, uses the analyzer it was trained with, and its weights are
trained (perplexity on fresh English prose far below a random model's ~12k)."""
import math
import subprocess
import sys

import pytest
import torch

from asa_runtime.registry import available, resolve

pytestmark = pytest.mark.skipif("asa-small" not in available(), reason="asa-small not installed")

# Written for this test (not from the training corpus), in the register of the training books.
PARAGRAPH = ("The carriage stopped at the gate of the old house, and the young lady stepped down into the "
             "road. She looked up at the windows, which were dark, and wondered whether anyone was at home. "
             "Presently the door opened, and an old servant came out with a lamp in his hand.")


@pytest.fixture(scope="module")
def lm():
    from asa_runtime.generate import load

    return load("asa-small")


def test_shipped_model_scores_english_prose_like_a_trained_model(lm):
    ids = lm.tokenizer.encode(PARAGRAPH)
    keys = lm.planner.plan([lm.tokenizer.pieces[i] for i in ids])
    x = torch.tensor(ids)[None]
    with torch.no_grad():
        logits = lm.model(x[:, :-1], torch.from_numpy(keys[:-1])[None])
    nll = torch.nn.functional.cross_entropy(logits[0].float(), x[0, 1:])
    assert math.exp(nll.item()) < 150, math.exp(nll.item())


def test_greedy_generation_is_deterministic_and_wordy(lm):
    from asa_runtime.generate import generate

    a = generate(lm, "It was a dark and stormy night", max_tokens=24, temp=0)
    b = generate(lm, "It was a dark and stormy night", max_tokens=24, temp=0)
    assert a == b and len(a.split()) >= 10
    assert sum(w.strip(".,;:!?\"'“”’").isalpha() for w in a.split()) >= 0.8 * len(a.split())


def test_shipped_model_records_the_package_analyzer():
    import json

    from asa_runtime.checkpoint import analyzer_info

    cfg = json.loads((resolve("asa-small") / "config.json").read_text())
    assert cfg["analyzer"]["artifacts"] == analyzer_info()["artifacts"]
    assert cfg["plan"]["mode"] == "full"


def test_runtime_needs_no_nltk():
    """At run time nothing needs nltk or nltk_data: only the shipped artifacts."""
    code = ("import sys; sys.modules['nltk'] = None\n"
            "from asa_runtime.generate import load, generate\n"
            "print(generate(load('asa-small'), 'The dog', max_tokens=4, temp=0))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PATH": "", "NLTK_DATA": "/nonexistent", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.strip()
