"""Carry a folder to the device machine in parts, over consecutive calls (a call carries at most 64 MiB,
the tracked tree included: with asa-small in the repository that leaves ~20 MB, less than runs/carry_prep).

    here:    python -m training.experiments.carry_parts split runs/carry_prep --parts 2   # -> runs/carry_prep.part1, .part2
    device, call 1 (carry runs/carry_prep.part1):
             python3 -m training.experiments.carry_parts stash runs/carry_prep.part1
    device, call 2 (carry runs/carry_prep.part2; the machine still warm):
             python3 -m training.experiments.carry_parts stash runs/carry_prep.part2 && \\
             python3 -m training.experiments.carry_parts join runs/carry_prep && python3 -m ... start

Files are cut into byte ranges so every part has about the same size; each part holds a manifest of the whole
(names, sizes, sha256), so `join` knows what it lacks and checks what it rebuilt. The stash lives outside the
work tree (/tmp/asa_carry), which a later call replaces.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from asa_runtime.checkpoint import sha256_file

STASH = Path(os.environ.get("ASA_CARRY_STASH", "/tmp/asa_carry"))


def split(src: Path, parts: int) -> list[Path]:
    files = sorted(p for p in src.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    per = -(-total // parts)
    manifest = {"name": src.name, "files": [{"name": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}
                                            for p in files], "chunks": []}
    outs = [src.with_name(f"{src.name}.part{i + 1}") for i in range(parts)]
    for o in outs:
        shutil.rmtree(o, ignore_errors=True)
        o.mkdir(parents=True)
    part, used = 0, 0
    for p in files:
        with open(p, "rb") as f:
            off = 0
            while off < p.stat().st_size or (off == 0 and p.stat().st_size == 0):
                if used >= per and part < parts - 1:
                    part, used = part + 1, 0
                n = min(p.stat().st_size - off, per - used) if part < parts - 1 else p.stat().st_size - off
                chunk = f"{p.name}.{off:012d}"
                (outs[part] / chunk).write_bytes(f.read(n))
                manifest["chunks"].append({"file": p.name, "offset": off, "size": n, "chunk": chunk,
                                           "part": part + 1})
                off += n
                used += n
                if n == 0:
                    break
    for o in outs:
        (o / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return outs


def stash(part: Path, to: Path = STASH) -> None:
    to.mkdir(parents=True, exist_ok=True)
    for p in part.iterdir():
        shutil.copyfile(p, to / p.name)
    print(f"{part} -> {to}: {sum(1 for _ in part.iterdir())} files")


def join(out: Path, frm: Path = STASH) -> None:
    manifest = json.loads((frm / "manifest.json").read_text())
    missing = [c["chunk"] for c in manifest["chunks"] if not (frm / c["chunk"]).exists()]
    if missing:
        parts = sorted({c["part"] for c in manifest["chunks"] if c["chunk"] in missing})
        sys.exit(f"join: part(s) {parts} not stashed yet ({len(missing)} chunks missing)")
    tmp = out.with_name(out.name + ".joining")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for fd in manifest["files"]:
        with open(tmp / fd["name"], "wb") as w:
            for c in sorted((c for c in manifest["chunks"] if c["file"] == fd["name"]), key=lambda c: c["offset"]):
                w.write((frm / c["chunk"]).read_bytes())
        if sha256_file(tmp / fd["name"]) != fd["sha256"]:
            sys.exit(f"join: {fd['name']} does not match its sha256")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"{out}: {len(manifest['files'])} files joined and checked")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["split", "stash", "join"])
    ap.add_argument("path", type=Path)
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--stash", type=Path, default=STASH)
    a = ap.parse_args(argv)
    if a.phase == "split":
        for o in split(a.path, a.parts):
            print(o, sum(p.stat().st_size for p in o.iterdir()))
    elif a.phase == "stash":
        stash(a.path, a.stash)
    else:
        join(a.path, a.stash)


if __name__ == "__main__":
    main()
