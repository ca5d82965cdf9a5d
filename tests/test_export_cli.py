"""`asa-run export` through click's CliRunner: bad input (missing model, corrupted checkpoint, unwritable
--out, unknown format or dtype, a write failing midway) is a one-line error with a non-zero exit and
leaves no file behind; a good export writes exactly the requested file."""
import shutil

import pytest
from cli_helpers import assert_one_line_error
from click.testing import CliRunner

import asa_runtime.cli.export as export_cli  # noqa: F401  (registers `export` on main)
from asa_runtime.cli import main

pytest.importorskip("gguf")


def run(*args, progress=False):
    return CliRunner().invoke(main, ["export", *map(str, args), *([] if progress else ["--no-progress"])])



def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_export_writes_the_file(tmp_path, tiny_checkpoint):
    out = tmp_path / "tiny.gguf"
    r = run("--model", tiny_checkpoint, "--format", "gguf", "--out", out, progress=True)
    assert r.exit_code == 0, r.output
    assert "gguf: converting" in r.stderr                 # progress is shown by default
    assert out.is_file() and out.read_bytes()[:4] == b"GGUF"
    assert leftovers(tmp_path) == ["tiny.gguf"]          # no temporary file left beside it
    assert "wrote" in r.stderr and str(out) in r.stderr


def test_missing_model(tmp_path):
    out = tmp_path / "x.gguf"
    assert_one_line_error(run("--model", tmp_path / "nope", "--format", "gguf", "--out", out), "nope")
    assert_one_line_error(run("--model", "no-such-model", "--format", "gguf", "--out", out), "no-such-model")
    assert leftovers(tmp_path) == []


def test_corrupted_checkpoint(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    shard = sorted(bad.glob("model*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])             # truncated shard
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run("--model", bad, "--format", "gguf", "--out", out_dir / "bad.gguf")
    assert_one_line_error(r, shard.name)
    assert leftovers(out_dir) == []


def test_corrupted_config(tmp_path, tiny_checkpoint):
    bad = tmp_path / "badcfg"
    shutil.copytree(tiny_checkpoint, bad)
    (bad / "config.json").write_text("{ not json")
    r = run("--model", bad, "--format", "gguf", "--out", tmp_path / "x.gguf")
    assert_one_line_error(r, "config")
    assert not (tmp_path / "x.gguf").exists()


def test_unwritable_out(tmp_path, tiny_checkpoint):
    r = run("--model", tiny_checkpoint, "--format", "gguf", "--out", tmp_path / "no" / "such" / "x.gguf")
    assert_one_line_error(r, "does not exist")
    r = run("--model", tiny_checkpoint, "--format", "gguf", "--out", tmp_path)    # a folder, not a file
    assert_one_line_error(r, "folder")
    r = run("--model", tiny_checkpoint, "--format", "gguf", "--out", "/proc/asa-export-test.gguf")
    assert_one_line_error(r, "cannot write")


def test_write_failure_midway_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    import errno

    import gguf

    def full_disk(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    out = tmp_path / "x.gguf"
    assert_one_line_error(run("--model", tiny_checkpoint, "--format", "gguf", "--out", out), "No space left")
    assert leftovers(tmp_path) == []


def test_failed_export_keeps_the_previous_file(tmp_path, tiny_checkpoint, monkeypatch):
    import gguf

    out = tmp_path / "x.gguf"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file",
                        lambda self, **kw: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    assert_one_line_error(run("--model", tiny_checkpoint, "--format", "gguf", "--out", out))
    assert out.read_bytes() == b"previous export" and leftovers(tmp_path) == ["x.gguf"]


def test_unknown_format_and_dtype(tmp_path, tiny_checkpoint):
    r = run("--model", tiny_checkpoint, "--format", "safetensors9", "--out", tmp_path / "x")
    assert_one_line_error(r, "--format")
    assert r.exit_code == 2
    r = run("--model", tiny_checkpoint, "--format", "gguf", "--out", tmp_path / "x.gguf", "--dtype", "bfloat16")
    assert_one_line_error(r, "float32", "float16")
    r = run("--model", tiny_checkpoint, "--out", tmp_path / "x.gguf")                 # no --format
    assert_one_line_error(r, "--format")
    assert leftovers(tmp_path) == []
