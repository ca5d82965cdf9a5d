"""Carrying a folder to the device in parts: split here, stash each part there, join and check."""
import os

import pytest

from training.experiments import carry_parts


def test_split_stash_join_round_trip(tmp_path):
    src = tmp_path / "carry"
    src.mkdir()
    files = {"a.bin": os.urandom(10_000), "b.json": b'{"x": 1}', "empty": b"", "c.bin": os.urandom(7_777)}
    for n, data in files.items():
        (src / n).write_bytes(data)
    parts = carry_parts.split(src, 3)
    sizes = [sum(p.stat().st_size for p in d.iterdir() if p.name != "manifest.json") for d in parts]
    assert sum(sizes) == sum(map(len, files.values())) and max(sizes) - min(sizes) < 100   # balanced
    stash = tmp_path / "stash"
    carry_parts.stash(parts[0], stash)
    with pytest.raises(SystemExit, match="part"):                  # a part is missing: says which
        carry_parts.join(tmp_path / "out", stash)
    for p in parts[1:]:
        carry_parts.stash(p, stash)
    carry_parts.join(tmp_path / "out", stash)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files


def test_join_refuses_a_damaged_chunk(tmp_path):
    src = tmp_path / "carry"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(4096))
    stash = tmp_path / "stash"
    for p in carry_parts.split(src, 2):
        carry_parts.stash(p, stash)
    chunk = sorted(x for x in stash.iterdir() if x.name.startswith("a.bin."))[0]
    chunk.write_bytes(b"\0" * chunk.stat().st_size)
    with pytest.raises(SystemExit, match="sha256"):
        carry_parts.join(tmp_path / "out", stash)
    assert not (tmp_path / "out").exists()                          # nothing half-written left behind
