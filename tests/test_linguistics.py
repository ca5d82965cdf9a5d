"""Grammar-book tests of the bonding rules: each reads as the rule it checks. Plans are built with no
local window and no sinks, so a key in a row is there because the rules bonded it."""
import pytest

from linguistic_helpers import Analysis

A = Analysis


def test_determiner_bonds_to_its_noun():
    assert A("The dog slept.").bonds("dog", "The")


def test_adjective_bonds_to_its_noun():
    assert A("The big dog slept.").bonds("dog", "big")


def test_verb_bonds_to_its_subject():
    assert A("The dog barked.").bonds("barked", "dog")


def test_object_bonds_to_its_verb():
    assert A("The dog chased the cat.").bonds("cat", "chased")


def test_participle_bonds_to_its_auxiliary():
    assert A("She has eaten.").bonds("eaten", "has")


def test_preposition_attaches_to_verb_and_its_object_to_it():
    a = A("The cat sat on the mat.")
    assert a.bonds("on", "sat") and a.bonds("mat", "on")


def test_adverb_bonds_to_the_verb_it_modifies():
    assert A("The horse ran quickly.").bonds("quickly", "ran")


def test_second_conjunct_bonds_to_first_and_to_coordinator():
    a = A("She fed the cats and dogs.")
    assert a.bonds("dogs", "cats") and a.bonds("dogs", "and")


def test_determiner_does_not_bond_to_an_earlier_noun():
    assert not A("The dog saw the cat.").bonds("the", "dog")


def test_interjection_bonds_to_nothing():
    a = A("Well, oh dear.")
    assert a.upos("oh") == "INTJ"
    assert a.rows[a.pos("oh")] == [a.pos("oh")]


def test_reflexive_bonds_to_local_agreeing_antecedent():
    assert A("The man hurt himself.").bonds("himself", "man")


def test_reflexive_does_not_bond_to_disagreeing_antecedent_in_full_but_does_in_pos_only():
    text = "The woman hurt himself."
    assert not A(text).bonds("himself", "woman")
    assert A(text, mode="pos_only").bonds("himself", "woman")


def test_reflexive_is_bound_inside_its_clause_principle_a():
    a = A("The man said that the boy hurt himself.")
    assert a.bonds("himself", "boy")
    assert not a.bonds("himself", "man")


def test_object_pronoun_is_free_in_its_clause_principle_b():
    a = A("The man saw him.")
    assert not a.bonds("him", "man")
    assert A("The man saw him.", mode="pos_only").bonds("him", "man")


def test_pronoun_finds_antecedent_in_previous_sentence():
    assert A("The man arrived. He smiled.").bonds("He", "man")


def test_pronoun_gender_must_agree_across_sentences():
    assert not A("The woman arrived. He smiled.").bonds("He", "woman")


def test_pronoun_number_must_agree():
    assert not A("The dogs barked. It ran.").bonds("It", "dogs")
    assert A("The dog barked. It ran.").bonds("It", "dog")


def test_it_does_not_refer_to_a_person():
    assert not A("The teacher left. It was late.").bonds("It", "teacher")


def test_selectional_violation_is_blocked_in_full_but_allowed_in_pos_only():
    text = "The idea ate."
    assert not A(text).bonds("ate", "idea")
    assert A(text, mode="pos_only").bonds("ate", "idea")


def test_selectional_violation_is_blocked_in_features_only():
    assert not A("The idea ate.", mode="features_only").bonds("ate", "idea")


def test_animate_subject_satisfies_eat():
    assert A("The dog ate.").bonds("ate", "dog")


def test_object_selectional_violation_is_blocked():
    a = A("The dog ate the idea.")
    assert not a.bonds("idea", "ate")
    assert A("The dog ate the bread.").bonds("bread", "ate")


def test_non_pronouns_do_not_bond_across_sentences():
    a = A("The dog barked. The cat ran.")
    assert not a.bonds("ran", "dog")
    assert a.bonds("ran", "cat")


def test_abbreviation_does_not_end_the_sentence():
    a = A("Mr. Smith smiled.")
    assert a.inc.st.features(a.pos("smiled")).sentence == a.inc.st.features(a.pos("Mr")).sentence


def test_newline_ends_the_sentence():
    a = A("The dog barked\n\nThe cat ran")
    assert a.inc.st.features(a.pos("cat")).sentence > a.inc.st.features(a.pos("dog")).sentence


def test_subword_pieces_attend_to_the_earlier_pieces_of_their_word():
    from asa_runtime.config import PlanConfig
    from asa_runtime.linguistics.planner import Planner

    pieces = ["The", " un", "believ", "able", " story"]
    rows = Planner(PlanConfig(mode="full", k=64, window=0, sinks=0)).plan(pieces)
    assert {1, 2} <= set(rows[3].tolist())            # "able" sees "un", "believ"
    assert {1, 2, 3} <= set(rows[4].tolist())            # "story" bonds to every piece of its modifier


@pytest.mark.parametrize("mode", ["full", "pos_only", "features_only"])
def test_every_mode_keeps_the_token_itself(mode):
    a = A("Colorless green ideas sleep furiously.", mode=mode)
    assert all(i in r for i, r in enumerate(a.rows))


def test_newline_after_a_full_stop_ends_the_sentence_even_before_lowercase():
    from asa_runtime.linguistics.segment import Segmenter

    seg = Segmenter()
    # "\n\n" as ONE token, as a BPE tokenizer gives it: the '.' closing must not weaken the newline's boundary
    sents = [seg.push(p)[3] for p in ["It", " ended", ".", "\n\n", "the", " next", " began", ".", " and", " so"]]
    assert sents[4] > sents[1]                                  # the newline wins over the lowercase
    assert sents[8] == sents[6]                                 # "began. and": lowercase, no newline
