"""The lexicon: shipped table, lookup semantics, fallbacks, robustness, and a tiny rebuild from NLTK data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asa_runtime.linguistics.features import AGR_BIT, N_UPOS, SEM_BIT, UPOS_ID
from asa_runtime.linguistics.lexicon import ARTIFACT, EMPTY, IS_NOUN, IS_VERB, PRONOUNS, LexEntry, Lexicon

NOUN, VERB, PROPN, PRON, ADJ, AUX = (UPOS_ID[t] for t in ("NOUN", "VERB", "PROPN", "PRON", "ADJ", "AUX"))
S, A = SEM_BIT, AGR_BIT


@pytest.fixture(scope="module")
def lex() -> Lexicon:
    return Lexicon.load()


def test_shipped_artifact_is_small_and_loads(lex):
    assert ARTIFACT.stat().st_size <= 4 * 1024 * 1024
    assert len(lex) > 50_000
    assert lex.meta["format"] == "asa-lexicon/1"
    assert "WordNet" in lex.meta["wordnet"]


def test_animal(lex):
    e = lex.lookup("dog", NOUN)
    assert e.sem & S["ANIMAL"] and e.sem & S["ANIMATE"] and e.sem & S["CONCRETE"]
    assert not e.sem & S["HUMAN"]
    assert e.agr & A["SING"] and not e.agr & A["PLUR"]


def test_abstract_not_animate(lex):
    e = lex.lookup("idea", NOUN)
    assert e.sem & S["ABSTRACT"]
    assert not e.sem & (S["ANIMATE"] | S["CONCRETE"])


def test_human(lex):
    assert lex.lookup("teacher", NOUN).sem & S["HUMAN"]
    assert lex.lookup("Teacher", NOUN) == lex.lookup("teacher", NOUN)  # case-insensitive


def test_location(lex):
    assert lex.lookup("city", NOUN).sem & S["LOCATION"]
    assert lex.lookup("Paris", PROPN).sem & S["LOCATION"]
    assert lex.lookup("Paris", NOUN).sem & S["LOCATION"]  # a name-only lemma reads the same as a noun


@pytest.mark.parametrize("form", ["eat", "eats", "ate", "eaten", "eating", "Ate"])
def test_eat_wants_animate_subject(lex, form):
    e = lex.lookup(form, VERB)
    assert e.subj_req & S["ANIMATE"]
    assert e.obj_req & S["FOOD"]
    assert e.sem == 0 and e.agr == 0


def test_selectional_violation_is_expressible(lex):
    """'the idea ate': idea has none of the bits eat's subject needs; 'the dog ate' has one."""
    eat = lex.lookup("ate", VERB)
    assert not lex.lookup("idea", NOUN).sem & eat.subj_req
    assert lex.lookup("dog", NOUN).sem & eat.subj_req
    assert lex.lookup("bread", NOUN).sem & eat.obj_req


def test_plural(lex):
    e = lex.lookup("dogs", NOUN)
    assert e.agr & A["PLUR"] and not e.agr & A["SING"]
    assert e.sem == lex.lookup("dog", NOUN).sem


def test_gender(lex):
    women = lex.lookup("women", NOUN)
    assert women.agr & A["FEM"] and women.agr & A["PLUR"] and not women.agr & A["MASC"]
    assert women.sem & S["HUMAN"]
    for w in ("man", "king", "boy"):
        assert lex.lookup(w, NOUN).agr & A["MASC"], w
    for w in ("woman", "queen", "girl"):
        assert lex.lookup(w, NOUN).agr & A["FEM"], w
    assert not lex.lookup("teacher", NOUN).agr & (A["MASC"] | A["FEM"])


def test_pronouns(lex):
    e = lex.lookup("himself", PRON)
    assert e.agr == A["REFLEXIVE"] | A["MASC"] | A["SING"] | A["PERS3"]
    assert e.sem & S["HUMAN"] and e.sem & S["ANIMATE"]
    for w in ("he", "she", "him", "her"):
        assert lex.lookup(w, PRON).sem & S["HUMAN"] and lex.lookup(w, PRON).sem & S["ANIMATE"], w
    assert lex.lookup("they", PRON).agr & A["PLUR"]
    assert lex.lookup("I", PRON).agr & A["PERS1"]
    assert lex.lookup("it", PRON).agr & A["NEUT"]
    assert not lex.lookup("you", PRON).agr & (A["SING"] | A["PLUR"])  # number unknown, not both
    assert lex.lookup("themselves", PRON).agr & A["REFLEXIVE"]
    assert not lex.lookup("them", PRON).agr & A["REFLEXIVE"]
    # a pronoun form read as a noun is the noun (helium), not the pronoun
    assert lex.lookup("he", NOUN) != lex.lookup("he", PRON)
    required = ("i me my mine myself you your yours yourself yourselves he him his himself she her hers "
                "herself it its itself we us our ours ourselves they them their theirs themselves who whom "
                "whose one oneself")
    for f in required.split():
        assert f in PRONOUNS, f


def test_upos_decides_reading(lex):
    assert lex.lookup("dog", VERB).sem == 0
    assert lex.lookup("ate", NOUN).subj_req == 0
    assert lex.lookup("dog", ADJ) is EMPTY
    assert lex.lookup("eat", AUX) is EMPTY  # auxiliaries select nothing


def test_unknown_and_apostrophes(lex):
    assert lex.lookup("qzxvbnmw", NOUN) == EMPTY
    assert lex.lookup("qzxvbnmw", VERB) == EMPTY
    assert lex.lookup("dog\u2019s", NOUN) == lex.lookup("dog's", NOUN) == lex.lookup("dog", NOUN)


def test_fallbacks_on_a_hand_made_table(tmp_path):
    dog = LexEntry(S["ANIMAL"] | S["ANIMATE"] | S["CONCRETE"], A["SING"])
    eat = LexEntry(0, 0, S["ANIMATE"], S["FOOD"])
    rows = {"dog": (dog, EMPTY, EMPTY, IS_NOUN), "eat": (EMPTY, eat, EMPTY, IS_VERB),
            "stop": (EMPTY, EMPTY, EMPTY, IS_VERB),
            "captain": (LexEntry(S["HUMAN"], A["SING"]), EMPTY, EMPTY, IS_NOUN)}
    path = tmp_path / "tiny.npz"
    Lexicon(rows, {"note": "hand-made"}).save(path)
    lex = Lexicon.load(path)
    assert lex.meta["note"] == "hand-made" and len(lex) == 4
    assert lex.lookup("dog", NOUN) == dog
    plural = lex.lookup("dogs", NOUN)  # not in the table: suffix stripping
    assert plural.sem == dog.sem and plural.agr == A["PLUR"]
    for form in ("eats", "eating", "eated"):
        assert lex.lookup(form, VERB) == eat, form
    assert lex.lookup("sea-captain", NOUN).sem == S["HUMAN"]  # hyphenated compound reads like its head
    assert lex.lookup("stoppers", NOUN).sem & S["HUMAN"]  # agent noun of a known verb
    assert lex.lookup("stopping", NOUN).sem & S["EVENT"]  # gerund of a known verb
    assert lex.lookup("cats", NOUN) == EMPTY


def test_rejects_other_files(tmp_path):
    import numpy as np

    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as fh:
        np.savez(fh, meta=np.frombuffer(b'{"format": "other"}', np.uint8))
    with pytest.raises(ValueError, match="asa-lexicon"):
        Lexicon.load(bad)


@settings(max_examples=300, deadline=None)
@given(word=st.text(max_size=40), upos=st.integers(min_value=-3, max_value=N_UPOS + 3))
def test_lookup_never_raises(lex, word, upos):
    e = lex.lookup(word, upos)
    assert isinstance(e, LexEntry)
    if upos not in (NOUN, VERB, PROPN, PRON):
        assert e is EMPTY


@pytest.mark.parametrize("word,upos", [(None, NOUN), (123, VERB), (b"dog", NOUN), ("dog", None), ("dog", [1]),
                                       ("\ud800", NOUN), ("", PRON), ("-", NOUN), ("'s", NOUN),
                                       ("--a--", VERB)])
def test_odd_inputs_give_an_entry(lex, word, upos):
    assert isinstance(lex.lookup(word, upos), LexEntry)


# ---- rebuild a tiny lexicon from the NLTK data (skipped when WordNet/VerbNet are not available)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nltk_data"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("nltk")
    from training import build_lexicon as bl

    if not SHARED.is_dir() and not os.environ.get("NLTK_DATA"):
        pytest.skip("no NLTK data (../shared/data/nltk_data or $NLTK_DATA)")
    bl.setup_nltk_data(None)
    try:
        wn = bl.load_wordnet()
        vn, _ = bl.load_verbnet()
    except Exception as e:  # noqa: BLE001 - click.ClickException or LookupError when the corpora are missing
        pytest.skip(f"WordNet/VerbNet not found: {e}")
    words = {"dog", "eat", "idea", "woman", "teacher", "city", "paris", "bread", "king"}
    lex, stats = bl.build(wn, vn, extra_forms=["ate", "women"], only_lemmas=words, log=lambda *a: None)
    path = tmp_path_factory.mktemp("lex") / "tiny.npz"
    lex.save(path)
    return Lexicon.load(path), stats


def test_tiny_build_from_nltk(tiny):
    lex, stats = tiny
    assert stats["noun_lemmas"] == 8  # all but "eat", which WordNet has only as a verb
    assert lex.lookup("dog", NOUN).sem & S["ANIMAL"]
    assert lex.lookup("dogs", NOUN).agr & A["PLUR"]
    assert lex.lookup("idea", NOUN).sem & S["ABSTRACT"] and not lex.lookup("idea", NOUN).sem & S["ANIMATE"]
    assert lex.lookup("teacher", NOUN).sem & S["HUMAN"]
    assert lex.lookup("Paris", PROPN).sem & S["LOCATION"]
    assert lex.lookup("women", NOUN).agr & A["FEM"]
    assert lex.lookup("king", NOUN).agr & A["MASC"]
    assert lex.lookup("ate", VERB).subj_req & S["ANIMATE"]
    assert lex.lookup("bread", NOUN).sem & lex.lookup("eats", VERB).obj_req
    assert "cat" not in lex  # only the lemmas asked for


def test_restriction_mask_logic():
    pytest.importorskip("nltk")
    import xml.etree.ElementTree as ET

    from training.build_lexicon import restriction_mask

    def m(xml):
        return restriction_mask(ET.fromstring(xml))

    assert m('<SELRESTRS><SELRESTR Value="+" type="animate"/></SELRESTRS>') == S["ANIMATE"]
    # conjunction keeps the specific restriction (FOOD), not the general one (CONCRETE)
    food_and_solid = '<SELRESTR Value="+" type="comestible"/><SELRESTR Value="+" type="solid"/>'
    assert m(f"<SELRESTRS>{food_and_solid}</SELRESTRS>") == S["FOOD"]
    assert m('<SELRESTRS logic="or"><SELRESTR Value="+" type="animate"/>'
             '<SELRESTR Value="+" type="organization"/></SELRESTRS>') == S["ANIMATE"] | S["ORGANIZATION"]
    assert m('<SELRESTRS><SELRESTR Value="-" type="animate"/></SELRESTRS>') == 0  # negation: no restriction
    assert m('<SELRESTRS logic="or"><SELRESTR Value="+" type="animate"/>'
             '<SELRESTR Value="-" type="animate"/></SELRESTRS>') == 0
    assert m("<SELRESTRS/>") == 0


def test_person_names_from_corpus_contexts():
    pytest.importorskip("nltk")
    from collections import Counter

    from training.build_lexicon import person_names

    cased = Counter({"Agnes": 50, "Rose": 40, "rose": 300, "Dombey": 60, "She": 900, "she": 9000,
                     "Brown": 30})
    hits = Counter({"Agnes": 20, "Rose": 10, "Dombey": 30, "She": 100, "Brown": 2})
    titles = {"Dombey": [15, 15]}
    prons = {"Agnes": [1, 19], "Dombey": [10, 2]}
    names = person_names(cased, hits, titles, prons)
    assert set(names) == {"agnes", "dombey"}  # "Rose" is mostly a noun, "She" a pronoun, "Brown" too rare
    assert names["agnes"][0] == A["FEM"]  # a first name: the pronouns decide
    assert names["dombey"][0] == 0  # a surname with Mr. and Mrs.: gender open
