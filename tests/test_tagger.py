"""The causal UPOS tagger: shipped artifact, accuracy on EWT, causality, robustness, fast path == reference."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asa_runtime.linguistics.features import N_UPOS, UPOS_ID
from asa_runtime.linguistics.tagger import CausalTagger, features, normalize

EWT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ud_english_ewt"
needs_ewt = pytest.mark.skipif(not (EWT / "en_ewt-ud-test.conllu.xz").exists(), reason="../shared/data absent")


@pytest.fixture(scope="module")
def tagger() -> CausalTagger:
    return CausalTagger.load()


@pytest.fixture(scope="module")
def ewt_test():
    from training.build_tagger import read_conllu

    return read_conllu(EWT / "en_ewt-ud-test.conllu.xz")


def test_shipped_artifact_loads(tagger):
    assert tagger.meta["upos"][UPOS_ID["NOUN"]] == "NOUN"
    assert len(tagger.tagdict) > 100 and len(tagger.lex) > 1000
    assert tagger.tagdict["the"] == UPOS_ID["DET"]


def test_obvious_tags(tagger):
    U = UPOS_ID
    assert tagger.tag("the", None, None, -1, -1) == U["DET"]
    assert tagger.tag_sentence(["the", "dog"]) == [U["DET"], U["NOUN"]]
    assert tagger.tag_sentence(["He", "ran", "quickly"])[2] == U["ADV"]
    assert tagger.tag_sentence(["She", "will", "sing", "."]) == [U["PRON"], U["AUX"], U["VERB"], U["PUNCT"]]
    assert tagger.tag("42", "has", "it", U["VERB"], U["PRON"]) == U["NUM"]


def test_typographic_quotes_are_normalised(tagger):
    assert normalize("don\u2019t") == "don't" and normalize("\u201cHi\u201d") == '"Hi"'
    left = ["John", "\u2019s", "dog"]
    assert tagger.tag_sentence(left) == tagger.tag_sentence(["John", "'s", "dog"])
    assert tagger.tag_sentence(left)[1] == UPOS_ID["PART"]


@needs_ewt
def test_accuracy_on_ewt_test_sample(tagger, ewt_test):
    sample = random.Random(0).sample(ewt_test, 600)
    good = total = 0
    for words, gold in sample:
        pred = tagger.tag_sentence(words)
        good += sum(p == g for p, g in zip(pred, gold))
        total += len(gold)
    assert good / total >= 0.93, good / total


@needs_ewt
def test_tag_sentence_is_prefix_consistent(tagger, ewt_test):
    rng = random.Random(1)
    for words, _ in rng.sample(ewt_test, 40):
        full = tagger.tag_sentence(words)
        for i in range(len(words)):
            assert tagger.tag_sentence(words[: i + 1]) == full[: i + 1]


@given(st.lists(st.text(max_size=12), max_size=12))
@settings(max_examples=150, deadline=None)
def test_prefix_consistency_on_arbitrary_words(words):
    tg = _shared()
    full = tg.tag_sentence(words)
    assert len(full) == len(words)
    for i in range(len(words)):
        assert tg.tag_sentence(words[: i + 1]) == full[: i + 1]


@given(st.text(), st.none() | st.text(), st.none() | st.text(),
       st.integers(-3, N_UPOS + 3), st.integers(-3, N_UPOS + 3))
@settings(max_examples=400, deadline=None)
def test_never_raises_and_returns_a_upos_id(word, p1, p2, t1, t2):
    tg = _shared()
    t = tg.tag(word, p1, p2, t1, t2)
    assert isinstance(t, int) and 0 <= t < N_UPOS


def test_empty_and_odd_strings(tagger):
    for w in ["", " ", "\n", "\x00", "\ud800", "🙂", "ß" * 100, "İ", "''", "``"]:
        assert 0 <= tagger.tag(w, w or None, None, 3, -1) < N_UPOS


def test_unfinished_prefix_is_just_a_word(tagger):
    # the analyzer calls tag() on a word's prefix while its subword tokens arrive: same API, no state
    a = tagger.tag("qui", "ran", "He", UPOS_ID["VERB"], UPOS_ID["PRON"])
    assert tagger.tag("quickly", "ran", "He", UPOS_ID["VERB"], UPOS_ID["PRON"]) == UPOS_ID["ADV"]
    assert tagger.tag("qui", "ran", "He", UPOS_ID["VERB"], UPOS_ID["PRON"]) == a


@given(st.lists(st.sampled_from(["the", "The", "dog", "runs", "ran", "to", "have", "that", ",", ".", "Mr.",
                                 "'s", "n't", "New", "York", "1999", "e-mail", "\u2019s", "quickly", "xqzt",
                                 "@", "", "<s>", "t1 3"]), min_size=1, max_size=8),
       st.lists(st.integers(-1, N_UPOS - 1), min_size=2, max_size=2))
@settings(max_examples=200, deadline=None)
def test_fast_path_equals_reference_features(words, tags):
    """The cached/decomposed scorer sums exactly the weights of features(...)."""
    tg = _shared()
    w, p1, p2 = words[-1], (words[-2] if len(words) > 1 else None), (words[-3] if len(words) > 2 else None)
    fast = tg.scores(w, p1, p2, tags[0], tags[1])
    ref = tg.reference_scores(w, p1, p2, tags[0], tags[1])
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-4)
    assert len(features(w, p1, p2, tags[0], tags[1], tg.lex)) > 20


@needs_ewt
def test_fast_path_equals_reference_on_ewt(tagger, ewt_test):
    for words, gold in random.Random(2).sample(ewt_test, 30):
        for i, w in enumerate(words):
            p1 = words[i - 1] if i else None
            p2 = words[i - 2] if i > 1 else None
            t1 = gold[i - 1] if i else -1
            t2 = gold[i - 2] if i > 1 else -1
            np.testing.assert_allclose(tagger.scores(w, p1, p2, t1, t2), tagger.reference_scores(w, p1, p2, t1, t2),
                                       rtol=1e-5, atol=1e-4)


@needs_ewt
def test_tags_on_ewt_dev_follow_the_reference_features(tagger):
    """tag() (cached, decomposed, tag-dictionary shortcut) decides as the plain sum over features() does,
    with the model's own previous tags as in the analyzer."""
    from training.build_tagger import read_conllu

    dev = read_conllu(EWT / "en_ewt-ud-dev.conllu.xz")
    for words, _ in random.Random(3).sample(dev, 40):
        tags = tagger.tag_sentence(words)
        for i, w in enumerate(words):
            args = (w, words[i - 1] if i else None, words[i - 2] if i > 1 else None,
                    tags[i - 1] if i else -1, tags[i - 2] if i > 1 else -1)
            ref = tagger.tagdict.get(normalize(w), -1)
            if ref < 0:
                ref = int(tagger.reference_scores(*args).argmax())
            assert tags[i] == ref == tagger.tag(*args), (words, i)


def test_read_conllu_skips_multiword_and_empty_nodes(tmp_path):
    from training.build_tagger import read_conllu

    p = tmp_path / "x.conllu"
    p.write_text("# text = I don't\n1\tI\tI\tPRON\t_\t_\t0\troot\t_\t_\n2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
                 "2\tdo\tdo\tAUX\t_\t_\t0\t_\t_\t_\n3\tn't\tnot\tPART\t_\t_\t0\t_\t_\t_\n"
                 "3.1\tx\tx\tVERB\t_\t_\t_\t_\t_\t_\n\n1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n", encoding="utf-8")
    assert read_conllu(p) == [(["I", "do", "n't"], [UPOS_ID["PRON"], UPOS_ID["AUX"], UPOS_ID["PART"]]),
                              (["Hi"], [UPOS_ID["INTJ"]])]


_TAGGER: list[CausalTagger] = []


def _shared() -> CausalTagger:
    # hypothesis tests cannot take module fixtures; load once
    if not _TAGGER:
        _TAGGER.append(CausalTagger.load())
    return _TAGGER[0]
