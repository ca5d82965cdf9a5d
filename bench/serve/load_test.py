"""Load test of `asa-run serve` on this machine: 50 concurrent streaming clients against asa-small, then
500 sequential short requests while the server's RSS is sampled.

Checks: every streamed response is complete (a finish_reason and [DONE]) and none is crossed with another
(each equals its own solo greedy run, computed here in-process with asa_runtime.generate.stream_generate on a
fresh session). Reports p50/p99 time to first token, per-client and aggregate tokens/s, and RSS over the
sequential requests. Bounded: short prompts, max_tokens 32, a total deadline; traffic only to 127.0.0.1.

    python bench/serve/load_test.py [--clients 50] [--max-tokens 32] [--sequential 500]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from apps.server.live import free_port  # noqa: E402

SUBJECTS = ["The old man", "The captain", "Her mother", "The young doctor", "A stranger", "The little girl",
            "The squire", "My uncle", "The innkeeper", "The poor widow"]
ACTIONS = ["opened the door and", "looked at the letter and", "walked down to the river and",
           "sat by the fire and", "rose from the table and"]
PROMPTS = [f"{s} {a}" for s in SUBJECTS for a in ACTIONS]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


async def one_stream(client, prompt, max_tokens, t_burst):
    t0 = time.perf_counter()
    ttft, parts, finish, done, usage = None, [], None, False, None
    async with client.stream("POST", "/v1/completions", json={
            "model": "asa-small", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}) as r:
        if r.status_code != 200:
            return {"prompt": prompt, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            d = line[6:]
            if d == "[DONE]":
                done = True
                break
            ev = json.loads(d)
            ch = ev["choices"][0]
            if ch["text"]:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                parts.append(ch["text"])
            if ch["finish_reason"]:
                finish, usage = ch["finish_reason"], ev.get("usage")
    t1 = time.perf_counter()
    return {"prompt": prompt, "text": "".join(parts), "ttft": ttft, "total": t1 - t0, "finish": finish,
            "done": done, "tokens": usage["completion_tokens"] if usage else None, "start": t0 - t_burst}


async def burst(url, prompts, max_tokens, deadline):
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=deadline, limits=limits) as c:
        t = time.perf_counter()
        res = await asyncio.wait_for(asyncio.gather(*(one_stream(c, p, max_tokens, t) for p in prompts)),
                                     timeout=deadline)
        return res, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--sequential", type=int, default=500)
    ap.add_argument("--ctx-size", type=int, default=256)
    ap.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole burst")
    ap.add_argument("--out", default=str(ROOT / "bench/serve/results"))
    a = ap.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" ({i})") for i in range(a.clients)]

    port = free_port()
    cmd = [sys.executable, "-c", "from asa_runtime.cli import main; main()", "serve", "--model", "asa-small", "--port", str(port),
           "--parallel", str(a.clients), "--queue", "16", "--ctx-size", str(a.ctx_size), "--keep-sessions", "8",
           "--temp", "0"]
    env = dict(os.environ)
    log = open(Path(a.out) / "server.log.tmp", "w")
    t_load = time.perf_counter()
    srv = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if srv.poll() is not None:
                raise SystemExit(f"server exited: {(Path(a.out) / 'server.log.tmp').read_text()[-500:]}")
            time.sleep(0.2)
        startup = time.perf_counter() - t_load
        proc = psutil.Process(srv.pid)
        rss_idle = proc.memory_info().rss

        # the references: each prompt alone, greedy, on a fresh session in this process
        from asa_runtime.generate import load, stream_generate
        lm = load("asa-small")
        t = time.perf_counter()
        solo = {p: "".join(r.text for r in stream_generate(lm, p, a.max_tokens, temp=0, ctx_size=a.ctx_size))
                for p in prompts}
        solo_s = time.perf_counter() - t
        del lm

        res, wall = asyncio.run(burst(url, prompts, a.max_tokens, a.deadline))
        rss_after_burst = proc.memory_info().rss
        errors = [r for r in res if "error" in r]
        ok = [r for r in res if "error" not in r]
        complete = [r for r in ok if r["done"] and r["finish"] in ("stop", "length")]
        crossed = [r["prompt"] for r in ok if r["text"] != solo[r["prompt"]]]
        ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
        per_client = [(r["tokens"] - 1) / (r["total"] - r["ttft"]) for r in ok
                      if r["tokens"] and r["tokens"] > 1 and r["ttft"] is not None and r["total"] > r["ttft"]]
        total_tokens = sum(r["tokens"] or 0 for r in ok)

        # memory over sequential short requests
        rss = []
        with httpx.Client(base_url=url, timeout=60) as c:
            t = time.perf_counter()
            for i in range(a.sequential):
                p = f"{PROMPTS[i % len(PROMPTS)]} ({i})"
                r = c.post("/v1/completions", json={"model": "asa-small", "prompt": p, "max_tokens": 8,
                                                    "temperature": 0})
                assert r.status_code == 200, r.text
                if i % 50 == 0 or i == a.sequential - 1:
                    rss.append((i + 1, proc.memory_info().rss))
            seq_s = time.perf_counter() - t
            health = c.get("/health").json()
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
        log.close()
        (Path(a.out) / "server.log.tmp").unlink(missing_ok=True)

    mib = 2 ** 20
    machine = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, torch threads default)"
    growth = (rss[-1][1] - rss[1][1]) / mib if len(rss) > 1 else 0.0
    result = {
        "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M"), "clients": a.clients,
        "max_tokens": a.max_tokens, "ctx_size": a.ctx_size, "server_startup_s": startup,
        "burst_wall_s": wall, "errors": len(errors), "complete": len(complete), "crossed": crossed,
        "ttft_p50_s": pct(ttfts, 50) if ttfts else None, "ttft_p99_s": pct(ttfts, 99) if ttfts else None,
        "per_client_tps_median": statistics.median(per_client) if per_client else None,
        "aggregate_tps": total_tokens / wall, "tokens": total_tokens, "solo_reference_s": solo_s,
        "rss_idle_mib": rss_idle / mib, "rss_after_burst_mib": rss_after_burst / mib,
        "sequential": a.sequential, "sequential_s": seq_s,
        "rss_sequential_mib": [(n, round(b / mib, 1)) for n, b in rss],
        "rss_growth_after_first_50_mib": growth, "health": health,
    }
    name = f"load_test_{platform.node() or 'machine'}"
    out = Path(a.out)
    (out / f"{name}.json.tmp").write_text(json.dumps(result, indent=1))
    os.replace(out / f"{name}.json.tmp", out / f"{name}.json")
    md = [f"# asa-run serve load test ({result['date']})", "",
          f"Machine: {machine}. Shared machine: other jobs were running (load average "
          f"{os.getloadavg()[0]:.1f} at the end). Command: `python bench/serve/load_test.py`.", "",
          f"Server: `asa-run serve --model asa-small --parallel {a.clients} --ctx-size {a.ctx_size} --temp 0` "
          f"(one model worker thread, requests interleaved token by token).", "",
          "| measure | value |", "|---|---|",
          f"| concurrent streaming clients | {a.clients} (max_tokens {a.max_tokens}, greedy) |",
          f"| complete responses (finish_reason + [DONE]) | {len(complete)}/{a.clients} ({len(errors)} errors) |",
          f"| crossed (differs from its solo greedy run) | {len(crossed)} |",
          f"| TTFT p50 / p99 | {result['ttft_p50_s']:.2f} s / {result['ttft_p99_s']:.2f} s |",
          f"| per-client decode tokens/s (median) | {result['per_client_tps_median']:.2f} |",
          f"| aggregate tokens/s over the burst | {result['aggregate_tps']:.1f} ({total_tokens} tokens in "
          f"{wall:.1f} s) |",
          f"| solo references (in-process stream_generate, one after another, same machine) | "
          f"{total_tokens / solo_s:.1f} tokens/s ({solo_s:.0f} s) |",
          f"| server RSS idle / after burst | {result['rss_idle_mib']:.0f} / {result['rss_after_burst_mib']:.0f} MiB |",
          f"| {a.sequential} sequential requests (max_tokens 8) | {seq_s:.1f} s |",
          f"| RSS growth from request 51 to {a.sequential} | {growth:+.1f} MiB |", "",
          "RSS over the sequential requests (request number, MiB): " +
          ", ".join(f"{n}: {m}" for n, m in result["rss_sequential_mib"]), ""]
    (out / f"{name}.md.tmp").write_text("\n".join(md) + "\n")
    os.replace(out / f"{name}.md.tmp", out / f"{name}.md")
    print("\n".join(md))
    return 0 if not crossed and len(complete) == a.clients else 1


if __name__ == "__main__":
    sys.exit(main())
