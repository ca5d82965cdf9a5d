"""The analyzer and planner do bounded work per token on every input (issue 15): a run with no word break
(letters, punctuation, symbols), a word of many tokens bonded or taken as an antecedent again and again, a
sentence of thousands of words. Nothing here is timed: the tests count what the code touches (characters
the tagger and lexicon read, positions the bonding and antecedent terms materialise) and bound memory, and
they check that the caps change no plan (docs/linguistics.md)."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asa_runtime.config import PlanConfig
from asa_runtime.linguistics import segment
from asa_runtime.linguistics.analyzer import Analyzer
from asa_runtime.linguistics.plan import validate_rows
from asa_runtime.linguistics.planner import ANTECEDENT_MEMORY, IncrementalPlan, Planner, _word_cap
from asa_runtime.linguistics.segment import MAX_WORD_CHARS, Segmenter

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RUN_CHARS = st.sampled_from(list("a.-_Z9é*'\"!)…\u4e00") + ["ab", "a-", ".\"", "?)", "Mr."])


def chunks(text: str, sizes: list[int]) -> list[str]:
    """Split text into pieces of the given sizes (cycled): how a tokenizer might cut a long run."""
    out, i, n = [], 0, 0
    while i < len(text):
        s = sizes[n % len(sizes)]
        out.append(text[i:i + s])
        i, n = i + s, n + 1
    return out


class Counting:
    """Wraps the analyzer's tagger and lexicon: the characters they are handed per call."""

    def __init__(self, analyzer: Analyzer):
        self.calls, self.chars, self.longest = 0, 0, 0
        tag, lookup = analyzer.tagger.tag, analyzer.lexicon.lookup

        def counted(f):
            def g(word, *a):
                self.calls += 1
                self.chars += len(word)
                self.longest = max(self.longest, len(word))
                return f(word, *a)
            return g

        self.restore = lambda: (setattr(analyzer.tagger, "tag", tag), setattr(analyzer.lexicon, "lookup", lookup))
        analyzer.tagger.tag, analyzer.lexicon.lookup = counted(tag), counted(lookup)


@pytest.fixture
def counting():
    c = Counting(Analyzer.default())
    yield c
    c.restore()


@SETTINGS
@given(RUN_CHARS, st.integers(500, 3000), st.lists(st.integers(1, 9), min_size=1, max_size=4),
       st.sampled_from(["", " ", "The man said ", "\n"]))
def test_a_run_without_word_breaks_costs_bounded_work_per_token(run, n, sizes, lead):
    c = Counting(Analyzer.default())
    try:
        pieces = chunks(lead, [4]) + chunks(run * n, sizes)
        keys = Planner(PlanConfig(mode="full")).plan(pieces)
    finally:
        c.restore()
    validate_rows(keys)
    # the tagger and lexicon read at most MAX_WORD_CHARS characters a call, at most twice per token
    # (a quadratic analyzer hands them every prefix of the run: n^2/2 characters)
    assert c.longest <= MAX_WORD_CHARS
    assert c.calls <= 2 * len(pieces)
    assert c.chars <= 2 * MAX_WORD_CHARS * len(pieces)


def test_a_word_of_100k_letters_is_analysed_from_its_head(counting):
    pieces = [" the", " man", " b"] + ["a"] * 100_000 + ["."]
    st_ = Analyzer.default().start()
    for p in pieces:
        st_.push(p)
        assert len(st_.seg.word_text) <= MAX_WORD_CHARS
    assert counting.longest <= MAX_WORD_CHARS
    # past the head the analysis is frozen: O(1) calls per word, not per token
    assert counting.calls <= 2 * (MAX_WORD_CHARS + 4)
    assert st_.seg._n == 1 and st_.w_text[2] == ("b" + "a" * MAX_WORD_CHARS)[:MAX_WORD_CHARS] and len(st_.w_start) == 4


class CountingPlan(IncrementalPlan):
    """Records how many positions the bonding and antecedent terms materialise per row."""

    def __init__(self, planner):
        super().__init__(planner)
        self.bonded_max = self.ant_max = self.ant_total = 0

    def _bonded(self, w):
        toks, s0 = super()._bonded(w)
        self.bonded_max = max(self.bonded_max, len(toks))
        return toks, s0

    def _antecedent_tokens(self, w):
        toks = super()._antecedent_tokens(w)
        self.ant_max = max(self.ant_max, len(toks))
        self.ant_total += len(toks)
        return toks


def counted_plan(cfg: PlanConfig, pieces, fast_path=True):
    inc = CountingPlan(Planner(cfg))
    inc.fast_path = fast_path
    keys = inc.extend_many(pieces)
    validate_rows(keys)
    return inc, keys


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_long_word_is_bonded_and_taken_as_antecedent_through_its_last_tokens(fast_path):
    """A noun of 5k tokens, then 500 short sentences with pronouns (antecedent search each time) and a long
    sentence bonding back to it: without the cap every pronoun copies the whole word (5k x 1k positions)."""
    cfg = PlanConfig(mode="full", k=16, window=4, sinks=2)
    cap = _word_cap(cfg)
    noun = [" The", " bl"] + ["ob"] * 5_000
    pieces = noun + [" ate", "."] + [" It", " ate", " it", "."] * 500 + [" and", " it"] * 40
    inc, keys = counted_plan(cfg, pieces, fast_path)
    assert inc.ant_total > 0                                   # the antecedent search did run
    assert inc.ant_max <= ANTECEDENT_MEMORY * cap
    assert inc.ant_total <= len(pieces) * ANTECEDENT_MEMORY * cap // 8
    assert inc.bonded_max <= 2 * (cfg.lookback_words + 1) * cap + 128


def test_a_sentence_of_many_words_costs_bounded_work_per_row():
    """6k words without a sentence break: bonding inspects `lookback_words` words per row, the cached key
    lists are trimmed to the lookback, so the work per row does not grow with the sentence."""
    cfg = PlanConfig(mode="full", k=16, window=4, sinks=2, lookback_words=24)
    words = " the man saw him and she said that it was a big dog , who ate them".split(" ")[1:]
    pieces = [" " + words[i % len(words)] for i in range(6_000)]
    inc, _ = counted_plan(cfg, pieces)
    assert max(inc.st.w_sent) == 0                            # one sentence
    assert inc.bonded_max <= 2 * (cfg.lookback_words + 1) * _word_cap(cfg) + 128
    assert inc.ant_max == 0                                   # no earlier sentence: nothing to search


@pytest.mark.parametrize("run", ["a", "-", "\u4e00"])
def test_memory_is_linear_in_input_length(run):
    """Peak Python memory of a whole plan build (fresh analyzer, cold caches) stays under a linear bound:
    the quadratic analyzer kept every prefix of the run in its word caches (6k tokens: > 30 MB)."""
    n = 6_000
    pieces = chunks(run * n, [len(run)])
    analyzer = Analyzer.load()
    planner = Planner(PlanConfig(mode="full"), analyzer=analyzer)
    tracemalloc.start()
    try:
        keys = planner.plan(pieces)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert keys.shape[0] == len(pieces)
    assert peak < 3_000_000 + 2_000 * len(pieces), f"{peak / 1e6:.1f} MB for {len(pieces)} tokens"


# --- the caps change no plan ---------------------------------------------------------------------------------
WORDS = "the a man dog dogs idea ate saw him himself her she he it they them John and that who said".split()
long_word = st.tuples(st.sampled_from(["a", "ob", ".", "-", "'s", "!"]), st.integers(1, 60))
item = st.one_of(st.sampled_from(WORDS).map(lambda w: [" " + w]),
                 st.sampled_from([".", ",", "!", "?\"", "\n", " ."]).map(lambda p: [p]),
                 long_word.map(lambda t: [" x"] + [t[0]] * t[1]))
pieces_st = st.lists(item, min_size=1, max_size=40).map(lambda xs: [p for x in xs for p in x])
cfg_st = st.builds(PlanConfig, mode=st.sampled_from(["full", "pos_only", "features_only", "random_bonds"]),
                   k=st.integers(1, 8), window=st.integers(0, 4), sinks=st.integers(0, 2),
                   stride=st.sampled_from([0, 5]), lookback_words=st.integers(1, 12),
                   cross_sentence=st.booleans())


@SETTINGS
@given(pieces_st, cfg_st, st.booleans())
def test_word_cap_changes_no_row(pieces, cfg, fast_path):
    """With small K the cap (2K + window + sinks) is far below these words' lengths; rows must equal the
    uncapped rule's (the cap set out of reach), on the fast path and the priority-order path."""
    capped = Planner(cfg).incremental()
    uncapped = Planner(cfg).incremental()
    uncapped._cap = 10 ** 9
    capped.fast_path = uncapped.fast_path = fast_path
    assert np.array_equal(capped.extend_many(pieces), uncapped.extend_many(pieces))


@SETTINGS
@given(st.lists(st.one_of(st.sampled_from([".", "'", "\"", ")", "?", "!", "Mr", " Mr", " ", "\n", " a", "s", "'s",
                                           "..", ".\"", " \u201d", "\u2019"]), st.text(max_size=5)),
                max_size=80))
def test_char_cap_changes_no_word_or_sentence_boundary(pieces):
    """The segmenter keeps a head of MAX_WORD_CHARS characters; with a head of 2 characters it must find the
    same words and sentences as with the whole word kept (the end of a word is tracked, not re-read)."""
    def run(cap):
        old = segment.MAX_WORD_CHARS
        segment.MAX_WORD_CHARS = cap
        try:
            seg = Segmenter()
            return [seg.push(p) for p in pieces], seg.state()
        finally:
            segment.MAX_WORD_CHARS = old
    (short, st_short), (whole, st_whole) = run(2), run(10 ** 9)
    assert short == whole
    assert [st_short[k] for k in ("n", "core_end", "core_last", "pending", "sent")] == \
        [st_whole[k] for k in ("n", "core_end", "core_last", "pending", "sent")]
