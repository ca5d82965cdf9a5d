"""bench_wide.tile_traffic: the bytes a tile kernel names over the floor's bytes, and its column in the table
rendered from a results JSON (no GPU: --render works on committed results)."""
import pytest

from bench.kernels.bench_wide import tile_traffic, to_markdown


def _row(**kw):
    r = dict(plan="p", N=4096, D=64, H=8, K=64, K_avg=20.0, auto="narrow", dense_ms=1.0, narrow_ms=0.1,
             narrow_layout_ms=0.05, wide_ms=0.1, wide_layout_ms=0.05, auto_ms=0.1, floor_ms=0.05,
             narrow_tiles=64, wide_tiles=64, wide_chunks=0)
    return {**r, **kw}


def test_one_tile_per_query_block_names_the_floor_but_the_plan():
    r = _row()                            # 64 query blocks, each reading only its own diagonal key block
    qkvo = 4 * 4096 * 64 * 8 * 2
    assert tile_traffic(r, 64) == pytest.approx(qkvo / (qkvo + 4096 * 64 * 4))


def test_re_read_key_blocks_count_once_per_tile_and_head():
    r = _row()
    one, three = tile_traffic(r, 64), tile_traffic(r, 3 * 64)      # each query block reads 3 key blocks
    # q and o stay 2 of the 4 units, K and V grow 3x: (2 + 2 * 3) / (2 + 2) = 2x the one-tile figure
    assert three / one == pytest.approx(2.0)
    assert tile_traffic(_row(D=128), 3 * 64) > three                # the plan's bytes matter less at D 128


def test_the_table_shows_both_paths_tile_bytes():
    res = {"device": "GPU", "torch": "t", "triton": "x", "ceilings": {"copy_GBps": 3000.0, "bf16_mm_TFLOPs": 700.0},
           "args": {"H": 8, "layers": 8}, "forward": [_row(narrow_tiles=3 * 64, wide_tiles=64, wide_chunks=64)],
           "fwd_bwd": [], "decode": []}
    md = to_markdown(res)
    header = next(l for l in md.splitlines() if l.startswith("| plan |"))
    row = next(l for l in md.splitlines() if l.startswith("| p |"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert float(cells["n tile bytes / floor"]) == pytest.approx(tile_traffic(res["forward"][0], 3 * 64), abs=0.01)
    assert float(cells["w tile bytes / floor"]) == pytest.approx(tile_traffic(res["forward"][0], 128), abs=0.01)
