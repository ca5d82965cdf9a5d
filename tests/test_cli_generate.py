"""`asa-run generate` through click's CliRunner: streaming output equals the library, every bad input is a
one-line error with a non-zero exit (never a traceback)."""
import shutil

import pytest
from cli_helpers import assert_one_line_error
from click.testing import CliRunner
from conftest import PARAGRAPHS
from test_generate import needs_analyzer

from asa_runtime.cli import main
from asa_runtime.generate import GenerationError, generate, load

PROMPT = "The old lighthouse keeper"


def run(*args, input=None):
    return CliRunner().invoke(main, ["generate", *map(str, args)], input=input)



def test_generate_streams_the_library_output(tiny_dense_checkpoint):
    r = run("-m", tiny_dense_checkpoint, "-p", PROMPT, "-n", 12, "--temp", 0)
    assert r.exit_code == 0, r.output
    assert r.stdout == generate(load(tiny_dense_checkpoint), PROMPT, 12, temp=0) + "\n"


def test_verbose_reports_speed_and_memory(tiny_dense_checkpoint):
    r = run("-m", tiny_dense_checkpoint, "-p", PROMPT, "-n", 5, "--temp", 0, "-v")
    assert r.exit_code == 0
    for word in ("tok/s", "TTFT", "peak memory"):
        assert word in r.stderr
    assert "tok/s" not in r.stdout


def test_seed_and_file_and_stop(tmp_path, tiny_dense_checkpoint):
    f = tmp_path / "p.txt"
    f.write_text(PARAGRAPHS[0], encoding="utf-8")
    a = run("-m", tiny_dense_checkpoint, "-f", f, "-n", 15, "--temp", 1.2, "--seed", 5)
    b = run("-m", tiny_dense_checkpoint, "-p", PARAGRAPHS[0], "-n", 15, "--temp", 1.2, "--seed", 5)
    assert a.exit_code == b.exit_code == 0 and a.stdout == b.stdout
    text = a.stdout.rstrip("\n")
    stop = text[6:9]
    c = run("-m", tiny_dense_checkpoint, "-f", f, "-n", 15, "--temp", 1.2, "--seed", 5, "--stop", stop)
    assert c.stdout == text[: text.find(stop)] + "\n"


def test_prompt_cache_flag(tmp_path, tiny_dense_checkpoint):
    cache = tmp_path / "cache.safetensors"
    args = ("-m", tiny_dense_checkpoint, "-p", PARAGRAPHS[1], "-n", 8, "--temp", 0, "--prompt-cache", cache)
    first, second = run(*args), run(*args)
    assert first.exit_code == second.exit_code == 0 and cache.exists()
    assert first.stdout == second.stdout
    cache.write_bytes(b"garbage")
    assert_one_line_error(run(*args), "prompt cache")


def test_bad_prompts(tmp_path, tiny_dense_checkpoint):
    m = ("-m", tiny_dense_checkpoint)
    assert_one_line_error(run(*m, "-p", ""), "empty prompt")
    assert_one_line_error(run(*m, "-p", "   \n"), "empty prompt")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert_one_line_error(run(*m, "-f", tmp_path / "empty.txt"), "empty prompt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    assert_one_line_error(run(*m, "-f", tmp_path / "latin1.txt"), "not UTF-8")
    assert_one_line_error(run(*m, "-f", tmp_path / "missing.txt"), "missing.txt")
    assert_one_line_error(run(*m, "-f", tmp_path), "cannot read")               # a directory
    assert_one_line_error(run(*m, "-p", "hi", "-f", tmp_path / "latin1.txt"), "not both")
    assert_one_line_error(run(*m), "no prompt")
    assert_one_line_error(run(*m, "-p", PARAGRAPHS[0], "--ctx-size", 8), "context")


@pytest.mark.parametrize("flag,value", [
    ("--temp", -1), ("--top-p", 0), ("--top-p", 1.5), ("--min-p", 1), ("--min-p", -0.1), ("--top-k", -1),
    ("--repeat-penalty", 0), ("--repeat-last-n", -2), ("--ctx-size", -1), ("--max-kv-size", -5),
    ("--prefill-chunk", -1), ("-n", -2), ("--device", "tpu"), ("--quantize", "int4"), ("--backend", "warp"),
    ("--temp", "hot"), ("--threads", 0),
])
def test_out_of_range_flags(tiny_dense_checkpoint, flag, value):
    assert_one_line_error(run("-m", tiny_dense_checkpoint, "-p", PROMPT, flag, value), flag)


def test_bad_models(tmp_path, tiny_dense_checkpoint):
    assert_one_line_error(run("-m", "no-such-model", "-p", PROMPT), "unknown model", "available models")
    assert_one_line_error(run("-m", tmp_path / "nowhere", "-p", PROMPT), "unknown model")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("-m", tmp_path / "empty", "-p", PROMPT), "config.json")

    def damaged(name, fn):
        d = tmp_path / name
        shutil.copytree(tiny_dense_checkpoint, d)
        fn(d)
        return d

    truncated = damaged("trunc", lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:5000]))
    assert_one_line_error(run("-m", truncated, "-p", PROMPT), "model.safetensors")

    def flip(d):
        b = bytearray((d / "model.safetensors").read_bytes())
        b[len(b) // 2] ^= 0xFF
        (d / "model.safetensors").write_bytes(bytes(b))
    assert_one_line_error(run("-m", damaged("flip", flip), "-p", PROMPT), "checksum")
    assert_one_line_error(run("-m", damaged("notok", lambda d: (d / "tokenizer.json").unlink()), "-p", PROMPT),
                          "tokenizer.json")
    assert_one_line_error(run("-m", damaged("noweights", lambda d: (d / "model.safetensors").unlink()),
                              "-p", PROMPT), "missing weights")
    assert_one_line_error(run("-m", damaged("badcfg", lambda d: (d / "config.json").write_text("{nope")),
                              "-p", PROMPT), "config")


def test_registry_name_not_installed():
    from asa_runtime.registry import available

    if "asa-small" in available():
        pytest.skip("asa-small is installed")
    assert_one_line_error(run("-m", "asa-small", "-p", PROMPT), "asa-small", "not installed")


def test_cuda_unavailable(tiny_dense_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert_one_line_error(run("-m", tiny_dense_checkpoint, "-p", PROMPT, "--device", "cuda"), "CUDA")


def test_max_kv_size_on_dense_model(tiny_dense_checkpoint):
    assert_one_line_error(run("-m", tiny_dense_checkpoint, "-p", PROMPT, "--max-kv-size", 16), "sparse")


@needs_analyzer
def test_sparse_model_with_bounded_cache(tiny_checkpoint):
    args = ("-m", tiny_checkpoint, "-p", PARAGRAPHS[0], "-n", 40, "--temp", 0, "--ctx-size", 128)
    full, bounded = run(*args), run(*args, "--max-kv-size", 100)
    assert full.exit_code == bounded.exit_code == 0
    assert full.stdout == bounded.stdout
    assert_one_line_error(run(*args, "--max-kv-size", 4), "too small")


def test_invalid_unicode_and_unwritable_prompt_cache(tmp_path, tiny_dense_checkpoint):
    r = run("-m", tiny_dense_checkpoint, "-p", "bad \udcff bytes", "-n", 2)
    assert_one_line_error(r, "not valid Unicode")
    r = run("-m", tiny_dense_checkpoint, "-p", PROMPT, "-n", 2, "--stop", "x\ud800")
    assert_one_line_error(r, "--stop is not valid Unicode")
    r = run("-m", tiny_dense_checkpoint, "-p", PROMPT, "-n", 2, "--prompt-cache", tmp_path / "no" / "dir" / "c")
    assert_one_line_error(r, "does not exist or is not writable")
    assert not (tmp_path / "no").exists()


@needs_analyzer
def test_rope_clamp_option(tiny_checkpoint):
    """--rope-clamp overrides the model's (off in the tiny model): 0 changes nothing, 8 changes what the far
    sinks score once the text is longer than 8 tokens; a value below -1 is a one-line error."""
    args = ("-m", tiny_checkpoint, "-p", PARAGRAPHS[0], "-n", 30, "--temp", 0, "--ctx-size", 128)
    plain, off, clamped = run(*args), run(*args, "--rope-clamp", 0), run(*args, "--rope-clamp", 8)
    assert plain.exit_code == off.exit_code == clamped.exit_code == 0
    assert plain.stdout == off.stdout
    assert clamped.stdout != plain.stdout
    assert_one_line_error(run(*args, "--rope-clamp", -2), "rope-clamp")
    with pytest.raises(GenerationError, match="rope_clamp must be an integer"):
        load(tiny_checkpoint, rope_clamp=-1)
