"""`asa-run perplexity`: the chunked score equals a token-by-token reference through Session.step (another
code path), the second-half rule scores what llama-perplexity scores, and bad input is one line."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from asa_runtime.cli import main
from asa_runtime.generate import Session, load

TEXT = ("The old lighthouse keeper looked at the sea and said nothing. The children ran along the beach, "
        "and their mother called them home before the storm. ") * 12


def run(*args):
    return CliRunner().invoke(main, ["perplexity", *map(str, args)])


def stepwise_nll(lm, ids):
    """-log p(ids[i] | ids[:i]) for i >= 1, one decode step at a time (not the prefill path)."""
    s = Session(lm, ctx_size=len(ids) + 4)
    logits, out = s.feed(ids[:1]), []
    for i in range(1, len(ids)):
        out.append(-torch.log_softmax(logits[: lm.tokenizer.vocab_size].float(), -1)[ids[i]].item())
        if i < len(ids) - 1:
            logits = s.step(int(ids[i]))
    return out


@pytest.mark.parametrize("ckpt", ["tiny_checkpoint", "tiny_dense_checkpoint"])
def test_perplexity_equals_the_stepwise_reference(tmp_path, request, ckpt):
    path = request.getfixturevalue(ckpt)
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    lm = load(path, kv_dtype="float32")
    ids = lm.tokenizer.encode(TEXT)
    ctx = 32
    assert len(ids) >= 3 * ctx
    ref = [stepwise_nll(lm, ids[c * ctx: (c + 1) * ctx]) for c in range(3)]
    for flag, first in (("--all-tokens", 0), (None, ctx // 2)):
        r = run("-m", path, "-f", f, "-c", ctx, "--chunks", 3, "--kv-dtype", "float32", "--prefill-chunk", 7,
                "--json", *([flag] if flag else []))
        assert r.exit_code == 0, r.output
        res = json.loads(r.output.strip().splitlines()[-1])
        want = [x for chunk in ref for x in chunk[first:]]        # chunk[j] predicts token j + 1
        assert res["tokens_scored"] == len(want) == 3 * (ctx - 1 - first)
        assert res["ppl"] == pytest.approx(math.exp(sum(want) / len(want)), rel=1e-4)
        assert res["ppl_stderr"] > 0 and res["chunks"] == 3
        running = [x for x in r.output.splitlines() if x.startswith("[1]")][0]
        assert running.count("[") == 3                           # the running estimate after each chunk


def test_mode_none_scores_the_same_weights_densely(tmp_path, tiny_checkpoint):
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    dense = load(tiny_checkpoint, kv_dtype="float32", mode="none")
    ids = dense.tokenizer.encode(TEXT)[:32]
    want = stepwise_nll(dense, ids)
    r = run("-m", tiny_checkpoint, "-f", f, "-c", 32, "--chunks", 1, "--all-tokens", "--mode", "none",
            "--kv-dtype", "float32", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["mode"] == "none" and res["ppl"] == pytest.approx(math.exp(sum(want) / len(want)), rel=1e-4)
    sparse = json.loads(run("-m", tiny_checkpoint, "-f", f, "-c", 32, "--chunks", 1, "--all-tokens",
                            "--kv-dtype", "float32", "--json").output.strip().splitlines()[-1])
    assert sparse["ppl"] != pytest.approx(res["ppl"], rel=1e-6)          # the plan changes what is attended


def test_perplexity_bad_input_is_one_line(tmp_path, tiny_checkpoint):
    short = tmp_path / "s.txt"
    short.write_text("Too short.")
    for args, msg in ((["-f", short, "-c", 32], "fewer than one chunk"),
                      (["-f", tmp_path / "missing.txt"], "missing.txt"),
                      (["-f", short, "-c", 100000], "max_seq_len"),
                      (["-f", short, "-c", 2], "too small")):
        r = run("-m", tiny_checkpoint, *args)
        assert r.exit_code != 0 and msg in r.output, r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) <= 2
