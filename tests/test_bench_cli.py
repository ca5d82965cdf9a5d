"""`asa-run bench` on a tiny configuration: the table's shape and units, JSON/CSV forms, the plot, and
one-line errors for bad flags."""
import json
import sys

import pytest
import torch
from click.testing import CliRunner

from asa_runtime.benchmark import COLUMNS
from asa_runtime.cli import main


def bench(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


def test_tiny_bench_table(tmp_path, tiny_checkpoint):
    out = tmp_path / "b.json"
    r = bench("-m", tiny_checkpoint, "-p", "16,40", "-n", 3, "-r", 2, "-o", "json", "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(x["mode"], x["context"]) for x in rows] == [("asa", 16), ("dense", 16), ("asa", 40), ("dense", 40)]
    for x in rows:
        assert x["repeats"] == 2 and x["n_gen"] == 3
        assert x["pp_tps"] > 0 and x["tg_tps"] > 0 and x["tg_cpu_tps"] > 0 and 0 < x["ttft_s"] < 60
        assert 10 < x["peak_rss_mib"] < 20000                         # MiB, not bytes or GiB
        lo, hi = x["spread"]["tg_tps"]
        assert lo <= x["tg_tps"] <= hi
    # the KV cache grows with the context (MiB): (ctx + n + warm-up + 8) slots per layer
    assert rows[2]["kv_mib"] > rows[0]["kv_mib"]
    assert data["machine"]["cores"] >= 1 and "torch" in data["machine"]["versions"]


def test_quantize_adds_one_set_of_torch_rows_per_scheme(tmp_path, tiny_checkpoint):
    out = tmp_path / "q.json"
    r = bench("-m", tiny_checkpoint, "-p", "16", "-n", 2, "-r", 1, "--mode", "asa", "--quantize", "none,f16",
              "-o", "json", "--out", out)
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["rows"]
    assert [(x["backend"], x["mode"]) for x in rows] == [("torch", "asa"), ("torch f16", "asa")]
    assert all(x["tg_tps"] > 0 for x in rows)


def test_markdown_csv_and_plot(tmp_path, tiny_dense_checkpoint):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    r = bench("-m", tiny_dense_checkpoint, "-p", "16", "-n", 2, "-r", 1, "--mode", "asa", "--plot", png)
    assert r.exit_code == 0, r.output
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| asa-run")]
    assert len(table) == 1 and len(table[0].split("|")) == 12
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = bench("-m", tiny_dense_checkpoint, "-p", "16", "-n", 2, "-r", 1, "--mode", "dense", "-o", "csv")
    lines = r.stdout.strip().splitlines()
    assert lines[0].split(",") == list(COLUMNS) and len(lines) == 2


@pytest.mark.parametrize("args,needle", [(("-p", "0"), ">= 1"), (("-p", "a,b"), "comma list"),
                                         (("--backend", "warp"), "unknown 'warp'"), (("--mode", "fast"), "unknown"),
                                         (("--device", "tpu"), "tpu"), (("--quantize", "int3"), "unknown 'int3'")])
def test_bad_flags_are_one_line(tiny_checkpoint, args, needle):
    r = bench("-m", tiny_checkpoint, *args)
    assert r.exit_code != 0 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.output


def test_llama_cpp_row_and_ratios(tmp_path, tiny_dense_checkpoint, monkeypatch):
    """llama.cpp runs on the dense GGUF of the same weights (exported into the cache once) and the table
    gains the ratio section."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    monkeypatch.setenv("ASA_CACHE", str(tmp_path / "cache"))
    r = bench("-m", tiny_dense_checkpoint, "-p", "24", "-n", 3, "-r", 1, "--mode", "dense", "--llama-cpp")
    assert r.exit_code == 0, r.output
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and len(ln.split("|")) == 12
            and not ln.startswith("| system")]
    assert [ln.split("|")[1].strip() for ln in rows] == ["asa-run", "llama.cpp"]
    assert "Against llama.cpp at the same context" in r.stdout
    assert len(list((tmp_path / "cache" / "gguf").glob("*.gguf"))) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_bench_without_a_gpu_is_one_line(tiny_checkpoint):
    r = bench("-m", tiny_checkpoint, "-p", "16", "-n", 2, "-r", 1, "--device", "cuda")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and "CUDA is not available" in r.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bench_tiny(tiny_checkpoint):
    r = bench("-m", tiny_checkpoint, "-p", "64", "-n", 4, "-r", 1, "--device", "cuda", "--mode", "asa,dense")
    assert r.exit_code == 0, r.output
    assert sum(1 for line in r.output.splitlines() if line.startswith("| asa-run |")) == 2
    assert f"GPU {torch.cuda.get_device_name(0)}" in r.output          # the table names the GPU it measured


def test_a_cpu_table_names_no_gpu_and_a_cuda_table_does():
    from asa_runtime import benchmark

    info = benchmark.machine()
    assert info["gpu"] is None and "GPU" not in benchmark.to_markdown([], info, 1)
    text = benchmark.to_markdown([], {**info, "gpu": "NVIDIA H200"}, 1)
    assert text.startswith(f"# asa-run bench ({info['host']}, NVIDIA H200)") and "GPU NVIDIA H200" in text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_benchmark_child_reports_its_own_peak_not_its_parents():
    """Every measurement runs in a child process; on Linux ru_maxrss carries the parent's high-water mark
    across vfork + exec, so the child reads VmHWM (asa_runtime/process_memory.py)."""
    import subprocess

    from asa_runtime.process_memory import current_rss_bytes, peak_rss_bytes

    big = bytearray(256 << 20)
    big[::4096] = b"\1" * len(big[::4096])                    # touch every page: resident in this process
    code = ("import resource; from asa_runtime.process_memory import peak_rss_bytes; "
            "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    own, inherited = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             check=True).stdout.split())
    assert own < 128 << 20 < (256 << 20) <= inherited         # the bug it avoids, and the fix
    assert peak_rss_bytes() >= current_rss_bytes() >= 256 << 20
    del big


def test_warmup_runs_each_configuration_once_untimed(tmp_path, tiny_checkpoint, monkeypatch):
    """--warmup: one extra run per configuration, before its repeats, left out of the medians (the first, slow
    result below would otherwise be the median of two); off by default on the CPU."""
    from asa_runtime import benchmark

    calls = []

    def fake(spec, timeout=3600):
        calls.append(spec.context)
        t = 1.0 if len(calls) % 3 == 1 else 100.0        # every configuration's first run is slow
        return {"pp_tps": t, "tg_tps": t, "tg_cpu_tps": t, "pp_cpu_tps": t, "ttft_s": 1 / t, "peak_rss_mib": 1.0,
                "kv_mib": 1.0}

    monkeypatch.setattr(benchmark, "run_one", fake)
    rows = benchmark.run(tiny_checkpoint, [16, 32], n_gen=2, repeats=2, modes=("asa",), progress=False, warmup=True)
    assert calls == [16, 16, 16, 32, 32, 32] and all(r.tg_tps == 100.0 for r in rows)
    calls.clear()
    benchmark.run(tiny_checkpoint, [16], n_gen=2, repeats=2, modes=("asa",), progress=False)
    assert calls == [16, 16]
