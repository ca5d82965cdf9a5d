"""`asa-run analyze`: per-token table and JSON, errors as one line."""
import json

from click.testing import CliRunner

from asa_runtime.cli import main


def test_analyze_json_has_the_documented_shape():
    r = CliRunner().invoke(main, ["analyze", "--text", "The dog ate the bread.", "--json", "--k", "8"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["mode"] == "full" and out["k"] == 8
    toks = out["tokens"]
    assert "".join(t["token"] for t in toks) == "The dog ate the bread."
    for t in toks:
        assert set(t) >= {"i", "token", "word", "upos", "features", "keys"}
        assert t["i"] in t["keys"] and all(k <= t["i"] for k in t["keys"]) and len(t["keys"]) <= 8
    dog = next(t for t in toks if t["word"] == "dog")
    assert dog["upos"] == "NOUN" and "ANIMAL" in dog["features"]


def test_analyze_dense_mode_lists_every_earlier_token():
    r = CliRunner().invoke(main, ["analyze", "--text", "a b c", "--mode", "none", "--json"])
    rows = json.loads(r.output)["tokens"]
    assert [t["keys"] for t in rows] == [list(range(i + 1)) for i in range(len(rows))]


def test_analyze_table_and_errors():
    r = CliRunner().invoke(main, ["analyze", "--text", "Hello there."])
    assert r.exit_code == 0 and "PUNCT" in r.output and "tokenizer=" in r.output
    bad = CliRunner().invoke(main, ["analyze", "--text", ""])
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1
    bad = CliRunner().invoke(main, ["analyze", "--text", "x", "--mode", "nope"])
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1
    bad = CliRunner().invoke(main, ["analyze", "--text", "x", "--model", "/nonexistent/model"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
