"""Plan mode "local" (the locality control of issue 16): self, own word, sinks and window, nothing else; the
plan contract holds, and reachable() keeps every key a later row can select."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asa_runtime.config import PlanConfig
from asa_runtime.linguistics.pieces import word_pieces
from asa_runtime.linguistics.plan import validate_rows
from asa_runtime.linguistics.planner import Planner

WORDS = ("the a dog man idea ate saw himself him he she it they John Mary and that who said . , ; ! ? \" 's "
         "un believ able \n\n \n").split(" ")
piece = st.one_of(st.sampled_from(WORDS).map(lambda w: " " + w), st.sampled_from(WORDS), st.text(min_size=1, max_size=4))
pieces_st = st.lists(piece, min_size=1, max_size=60)
cfg_st = st.builds(PlanConfig, mode=st.just("local"), k=st.integers(1, 24), window=st.integers(0, 6),
                   sinks=st.integers(0, 3), stride=st.sampled_from([0, 5]), lookback_words=st.integers(1, 12),
                   cross_sentence=st.booleans())
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROSE = ("The old man who had seen the children said that he would feed them himself, and the woman thanked "
         "him. She ate the bread quickly. They said the dogs saw themselves in the water while John watched. ") * 4


def expected_local_row(i, ws, cfg):
    """Priority order of the plan (self, own word, sinks, window), cut at K, ascending."""
    out = [i]
    for p in list(range(i - 1, ws - 1, -1)) + list(range(min(cfg.sinks, i))) + \
            list(range(i - 1, max(-1, i - 1 - cfg.window), -1)):
        if p not in out and len(out) < cfg.k:
            out.append(p)
    return sorted(out)


def test_local_rows_are_exactly_self_word_sinks_and_window():
    pieces = word_pieces(PROSE)
    for cfg in (PlanConfig(mode="local"), PlanConfig(mode="local", k=8, window=6, sinks=2),
                PlanConfig(mode="local", k=96, window=64)):
        inc = Planner(cfg).incremental()
        for i, p in enumerate(pieces):
            row = inc.extend(p)
            ws = inc.st.w_start[inc.st.tok_word[i]]
            assert row[row >= 0].tolist() == expected_local_row(i, ws, cfg)


def test_local_is_full_without_its_linguistic_keys():
    """Every local key is a key of the full plan (same K, window, sinks), and full has keys local lacks."""
    pieces = word_pieces(PROSE)
    loc = Planner(PlanConfig(mode="local")).plan(pieces)
    full = Planner(PlanConfig(mode="full")).plan(pieces)
    extra = 0
    for a, b in zip(loc, full):
        la, lb = set(a[a >= 0].tolist()), set(b[b >= 0].tolist())
        assert la <= lb
        extra += len(lb - la)
    assert extra > len(pieces)                  # bonds and antecedents: more than one per row on average


@FAST
@given(pieces_st, cfg_st)
def test_local_plan_contract_causality_and_reachable(pieces, cfg):
    keys = Planner(cfg).plan(pieces)
    validate_rows(keys)
    for i in range(len(pieces)):                # causal at token granularity
        assert np.array_equal(Planner(cfg).plan(pieces[: i + 1]), keys[: i + 1])
    slow = Planner(cfg).incremental()
    slow.fast_path = False
    assert np.array_equal(slow.extend_many(pieces), keys)
    inc = Planner(cfg).incremental()            # every key a later row picks was still reachable before it
    for i, p in enumerate(pieces):
        if i:
            keep = set(inc.reachable().tolist())
            row = keys[i]
            assert set(row[(row >= 0) & (row < i)].tolist()) <= keep
        inc.extend(p)
