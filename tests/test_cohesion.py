"""Lexical-cohesion bonds (PlanConfig.cohesion, issue 16): a noun or proper noun may select the tokens of the
`cohesion` most recent earlier mentions of its lemma anywhere in the document. Causal at token granularity,
bounded per lemma and in distinct lemmas, evictable (reachable() covers them), carried by the prompt-cache
state, and off (0) by default with every existing plan and config dict unchanged."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asa_runtime.config import ModelConfig, PlanConfig
from asa_runtime.linguistics import planner as planner_mod
from asa_runtime.linguistics.pieces import word_pieces
from asa_runtime.linguistics.plan import validate_rows
from asa_runtime.linguistics.planner import Planner, cohesion_lemma
from test_plan_properties import check_reachable, check_round_trip  # noqa: E402  (the shared checks)

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# names that recur across sentences (far beyond one sentence's lookback), split into subword pieces
NAMES = [[" Casa", "ubon"], [" Dor", "othea"], [" Lyd", "gate"], [" Will"], [" Fred"], [" dogs"], [" dog"], [" river"],
         [" rivers"], [" Ros", "amond"]]
FILLER = (" the a man woman said that he she it saw and quickly big was . , ; \n").split(" ")[1:]
item = st.one_of(st.sampled_from(NAMES), st.sampled_from(FILLER).map(lambda w: [" " + w]),
                 st.sampled_from([".", ",", "\n", "'s"]).map(lambda p: [p]), st.text(min_size=1, max_size=3).map(lambda t: [t]))
pieces_st = st.lists(item, min_size=1, max_size=50).map(lambda xs: [p for x in xs for p in x])
cfg_st = st.builds(PlanConfig, mode=st.sampled_from(["full", "pos_only", "features_only", "local", "random_bonds"]),
                   k=st.integers(1, 24), window=st.integers(0, 6), sinks=st.integers(0, 3),
                   stride=st.sampled_from([0, 5]), lookback_words=st.integers(1, 6), cross_sentence=st.booleans(),
                   cohesion=st.integers(1, 4))

STORY = ("Mr. Casaubon walked to the old river with Dorothea. The weather was cold and grey, and nobody "
         "spoke for a long time. ") + ("The servants carried baskets up the hill while the dogs slept. " * 12) + \
        "At last Casaubon looked at Dorothea and said nothing about the river."


def rows_of(cfg, pieces):
    return Planner(cfg).plan(pieces)


def mention_tokens(inc, word):
    st_ = inc.st
    return set(range(st_.w_start[word], st_.w_start[word + 1]))


def words_with_text(inc, text):
    return [j for j, t in enumerate(inc.st.w_text[:-1]) if t == text]


# --- off by default: nothing changes ---------------------------------------------------------------------------
def test_off_by_default_and_config_dicts_unchanged():
    assert PlanConfig().cohesion == 0
    assert "cohesion" not in PlanConfig().to_dict()                     # plan caches / prompt hashes as before
    assert "cohesion" not in ModelConfig().to_dict()["plan"]
    d = PlanConfig(cohesion=4).to_dict()
    assert d["cohesion"] == 4 and PlanConfig.from_dict(d) == PlanConfig(cohesion=4)
    assert ModelConfig.from_dict(ModelConfig(plan=PlanConfig(cohesion=2)).to_dict()).plan.cohesion == 2
    for bad in (-1, True, 1.5, "4"):
        with pytest.raises(ValueError):
            PlanConfig(cohesion=bad)


def test_rows_hold_earlier_mentions_only_when_on():
    pieces = word_pieces(STORY)
    base = dict(mode="full", k=64, window=8, sinks=2)
    inc = Planner(PlanConfig(cohesion=4, **base)).incremental()
    on = inc.extend_many(pieces)
    off = rows_of(PlanConfig(**base), pieces)
    validate_rows(on)
    last = len(inc.st.w_text) - 1
    for name in ("casaubon", "dorothea", "river"):
        ws = [j for j, t in enumerate(inc.st.w_text) if t == name]
        assert len(ws) == 2, (name, ws)
        first, second = ws
        assert second - first > 96 or inc.st.w_sent[first] != inc.st.w_sent[second]   # beyond the bonds' reach
        prev = mention_tokens(inc, first)
        for t in range(inc.st.w_start[second], inc.st.w_start[second + 1] if second < last else len(pieces)):
            assert prev <= set(on[t].tolist()), (name, t)          # every token of the later mention sees it
            assert not prev & set(off[t].tolist()), (name, t)       # and without cohesion none does


def test_first_piece_of_a_split_name_selects_the_earlier_mention():
    pieces = [" Casa", "ubon", " walked", "."] + [" The", " man", " slept", "."] * 30 + [" Casa", "ubon", " left"]
    cfg = PlanConfig(mode="full", k=16, window=2, sinks=0, cohesion=2)
    keys = rows_of(cfg, pieces)
    i = len(pieces) - 3                                           # the row of the second " Casa"
    assert {0, 1} <= set(keys[i].tolist()) and {0, 1} <= set(keys[i + 1].tolist())
    assert not {0, 1} & set(rows_of(PlanConfig(mode="full", k=16, window=2, sinks=0), pieces)[i].tolist())


def test_inflection_matches_and_function_words_do_not_query():
    assert cohesion_lemma("dogs") == "dog" and cohesion_lemma("stories") == "story"
    assert cohesion_lemma("churches") == "church" and cohesion_lemma("glass") == "glass"
    pieces = [" dogs", " bark", "."] + [" The", " man", " slept", "."] * 30 + [" the", " dog", " ran"]
    cfg = PlanConfig(mode="full", k=16, window=2, sinks=0, cohesion=2)
    keys = rows_of(cfg, pieces)
    assert 0 in keys[len(pieces) - 2]                              # " dog" -> earlier " dogs"
    assert 0 not in keys[len(pieces) - 3] and 0 not in keys[len(pieces) - 1]   # " the", " ran" do not


def test_bounded_number_of_mentions_per_lemma():
    """Ten earlier mentions of one name: a row holds only the `cohesion` most recent ones."""
    sent = [" Dorothea", " slept", "."] + [" The", " man", " ran", "."] * 4
    pieces = sent * 10 + [" Dorothea"]
    starts = [n * len(sent) for n in range(10)]
    for c in (1, 3, 5):
        row = set(rows_of(PlanConfig(mode="full", k=64, window=2, sinks=0, cohesion=c), pieces)[-1].tolist())
        assert [s for s in starts if s in row] == starts[-c:], c


def test_distinct_lemmas_are_bounded(monkeypatch):
    monkeypatch.setattr(planner_mod, "COHESION_LEMMAS", 8)
    monkeypatch.setattr(planner_mod, "COHESION_PER_PREFIX", 2)
    names = ["".join(chr(97 + (n // 26 ** d) % 26) for d in range(3)) + "ton" for n in range(200)]
    pieces = [p for nm in names for p in (" " + nm.capitalize(), " came", ".")]
    inc = Planner(PlanConfig(mode="full", k=16, window=2, sinks=0, cohesion=3)).incremental()
    for p in pieces:
        inc.extend(p)
        assert len(inc._coh) <= 8 and len(inc._coh_prefix) <= 8
        assert all(len(v) <= 2 for v in inc._coh_prefix.values())
    assert len(inc._coh) == 8                                      # the memory is full, and stays so
    assert len(inc.reachable()) < 8 * 3 + 2 + 64                    # so does the KV bound


# --- the plan contract with cohesion on -------------------------------------------------------------------------
@FAST
@given(pieces_st, cfg_st)
def test_causal_at_token_granularity(pieces, cfg):
    full = rows_of(cfg, pieces)
    for i in range(len(pieces)):
        assert np.array_equal(rows_of(cfg, pieces[: i + 1]), full[: i + 1])


@FAST
@given(pieces_st, cfg_st)
def test_rows_well_formed_extend_equals_batch_and_fast_equals_priority(pieces, cfg):
    keys = rows_of(cfg, pieces)
    assert keys.shape == (len(pieces), cfg.k)
    validate_rows(keys)
    inc = Planner(cfg).incremental()
    assert np.array_equal(np.stack([inc.extend(p) for p in pieces]), keys)
    slow = Planner(cfg).incremental()
    slow.fast_path = False
    assert np.array_equal(slow.extend_many(pieces), keys)


@FAST
@given(pieces_st, cfg_st, st.booleans())
def test_word_cap_changes_no_row(pieces, cfg, fast_path):
    capped, uncapped = Planner(cfg).incremental(), Planner(cfg).incremental()
    uncapped._cap = 10 ** 9
    capped.fast_path = uncapped.fast_path = fast_path
    assert np.array_equal(capped.extend_many(pieces), uncapped.extend_many(pieces))


@FAST
@given(pieces_st, cfg_st)
def test_future_rows_select_only_reachable_positions(pieces, cfg):
    check_reachable(pieces, cfg)


@pytest.mark.parametrize("mode", ["full", "local"])
def test_future_rows_select_only_reachable_positions_on_prose(mode):
    """No antecedent memory or lookback to hide behind: only the cohesion term keeps the mentions."""
    cfg = PlanConfig(mode=mode, k=24, window=2, sinks=1, lookback_words=2, cross_sentence=False, cohesion=2)
    check_reachable(word_pieces(STORY)[:400], cfg)


def test_reachable_keeps_mentions_far_outside_the_window():
    pieces = word_pieces(STORY)
    inc = Planner(PlanConfig(mode="full", k=64, window=8, sinks=2, cohesion=2)).incremental()
    inc.extend_many(pieces)
    reach = set(inc.reachable().tolist())
    j = words_with_text(inc, "casaubon")[0]
    assert mention_tokens(inc, j) <= reach
    off = Planner(PlanConfig(mode="full", k=64, window=8, sinks=2)).incremental()
    off.extend_many(pieces)
    assert not mention_tokens(inc, j) & set(off.reachable().tolist())


@FAST
@given(pieces_st, cfg_st, st.data())
def test_state_round_trip_continues_identically(pieces, cfg, data):
    inc, _ = check_round_trip(pieces, cfg, data.draw(st.integers(0, len(pieces))))
    restored = Planner(cfg).incremental_from_state(inc.state_dict())     # the cohesion state itself survives
    assert list(restored._coh.items()) == list(inc._coh.items())
    assert list(restored._coh_prefix.items()) == list(inc._coh_prefix.items())


def test_state_of_another_cohesion_is_refused():
    inc = Planner(PlanConfig(cohesion=2)).incremental()
    inc.extend_many(word_pieces("The dog ran."))
    with pytest.raises(ValueError):
        Planner(PlanConfig(cohesion=3)).incremental_from_state(inc.state_dict())
    with pytest.raises(ValueError):
        Planner(PlanConfig()).incremental_from_state(inc.state_dict())
