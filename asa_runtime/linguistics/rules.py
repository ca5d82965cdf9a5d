"""Bonding rules: may a word attend to an earlier word? One place for the 17x17 UPOS matrix, the
feature rules and the hard blocks, each with its linguistic reason.

Modes (PlanConfig.mode): "full" = UPOS compatibility AND no feature/binding block; "pos_only" = UPOS
compatibility only; "features_only" = every pair unless a feature/binding rule blocks it. ("none" and
"random" are handled by the planner: no plan / a random control.)

The query is always the LATER word, the key the earlier one, so the matrix is directional: row = query
UPOS, columns = the earlier UPOS classes it can be in a dependency relation with (as head or dependent),
given English word order.
"""
from __future__ import annotations

from .features import AGR_BIT, SEM_BIT, UPOS, UPOS_ID

# query UPOS -> earlier UPOS it may bond with, and why.
_POS_BONDS: dict[str, tuple[str, str]] = {
    "NOUN": ("DET ADJ NUM NOUN PROPN PRON PART VERB AUX ADP CCONJ",
             "its determiners, modifiers, compounds and possessors precede it (the big dog, John 's dog); "
             "its head precedes it as verb (ate bread), preposition (in the house) or copula (is a teacher); "
             "a coordinated noun follows its conjunct and the coordinator (cats and dogs)"),
    "PROPN": ("DET ADJ NUM NOUN PROPN PRON PART VERB AUX ADP CCONJ", "as NOUN"),
    "PRON": ("NOUN PROPN PRON VERB AUX ADP CCONJ SCONJ",
             "antecedents (nominals, checked by agreement and binding theory); its governing verb or preposition "
             "(saw him, to her); coordination and clause markers"),
    "VERB": ("NOUN PROPN PRON AUX ADV PART SCONJ CCONJ VERB ADJ",
             "its subject precedes it (the dog barked), so do auxiliaries (has eaten), negation and infinitival "
             "to, preverbal adverbs, subordinators (because he left) and coordinated verbs; a controlling "
             "verb or adjective precedes an xcomp (wanted to go, ready to go)"),
    "AUX": ("NOUN PROPN PRON AUX ADV PART SCONJ CCONJ VERB",
            "subject before the auxiliary/copula (she is), stacked auxiliaries (could have been)"),
    "ADJ": ("DET ADV AUX VERB NOUN PROPN PRON CCONJ ADJ",
            "degree adverbs (very big); copula and raising verbs (is big, seems happy); the subject of a "
            "predicate adjective (the dog is big); stacked or coordinated adjectives; the determiner of its NP"),
    "ADV": ("VERB AUX ADJ ADV", "adverbs modify the verb, adjective or adverb before them (ran quickly)"),
    "ADP": ("VERB NOUN PROPN PRON ADJ ADV NUM",
            "a preposition attaches its phrase to an earlier head (sat on, cup of, afraid of, out of)"),
    "DET": ("VERB AUX ADP DET",
            "a determiner opens an argument of the verb or preposition before it (saw the, in the, all the)"),
    "NUM": ("DET ADP VERB NUM NOUN", "numbers as modifiers or arguments (the two, in 1850, chapter 3)"),
    "PART": ("VERB AUX NOUN PROPN PRON ADJ",
             "negation and particles follow their verb (did not, gave up); possessive 's follows its owner; "
             "infinitival to after its governor (able to)"),
    "CCONJ": ("NOUN PROPN PRON VERB AUX ADJ ADV NUM", "a coordinator attaches to the first conjunct"),
    "SCONJ": ("VERB AUX ADJ NOUN", "a subordinate clause attaches to the main predicate before it"),
    "PUNCT": ("VERB AUX PUNCT", "punctuation attaches to the clause head; a closing quote to its opener"),
    "INTJ": ("", "interjections stand outside the syntax"),
    "SYM": ("NUM NOUN", "symbols go with the quantity they mark (5 %)"),
    "X": ("", "unknown / whitespace tokens: no bonds (window and sinks only)"),
}

# POS_COMPAT[q] is a bitmask over earlier UPOS ids.
POS_COMPAT: list[int] = [0] * len(UPOS)
for _q, (_keys, _why) in _POS_BONDS.items():
    for _k in _keys.split():
        POS_COMPAT[UPOS_ID[_q]] |= 1 << UPOS_ID[_k]

NOUN, PROPN, PRON, VERB, AUX = (UPOS_ID[t] for t in ("NOUN", "PROPN", "PRON", "VERB", "AUX"))
NOMINAL_MASK = (1 << NOUN) | (1 << PROPN) | (1 << PRON)

_HUMANLIKE = SEM_BIT["HUMAN"] | SEM_BIT["ANIMATE"] | SEM_BIT["ANIMAL"]
_SING, _PLUR = AGR_BIT["SING"], AGR_BIT["PLUR"]
_MASC, _FEM, _NEUT = AGR_BIT["MASC"], AGR_BIT["FEM"], AGR_BIT["NEUT"]
_PERSONS = AGR_BIT["PERS1"] | AGR_BIT["PERS2"] | AGR_BIT["PERS3"]
_REFL = AGR_BIT["REFLEXIVE"]
# Object-case personal pronouns: Principle B forbids a co-argument antecedent ("John saw him": him != John).
OBJECT_PRONOUNS = frozenset({"him", "them", "me", "us", "her"})
# Words that open a new clause (the local domain of binding and selection ends there).
CLAUSE_OPENERS = frozenset({"who", "whom", "whose", "which", "that", ";", ":"})


def agreement_conflict(q_agr: int, q_sem: int, k_agr: int, k_sem: int) -> bool:
    """A pronoun (q) and a candidate antecedent (k) disagree in number, gender or animacy."""
    if (q_agr & _SING and k_agr & _PLUR) or (q_agr & _PLUR and k_agr & _SING):
        return True
    if (q_agr & _MASC and k_agr & _FEM) or (q_agr & _FEM and k_agr & _MASC):
        return True
    if q_agr & (_MASC | _FEM) and k_sem and not k_sem & _HUMANLIKE:
        return True                                    # he/she do not refer to an idea or a table
    if q_agr & _NEUT and not q_agr & (_MASC | _FEM) and k_sem & SEM_BIT["HUMAN"]:
        return True                                    # "it" does not refer to a person
    kp = k_agr & _PERSONS
    if kp and (q_agr & _PERSONS) and kp != q_agr & _PERSONS:
        return True                                    # I ... him: persons differ
    return False


def feature_block(q_upos: int, q_sem: int, q_agr: int, q_subj: int, q_obj: int, q_text: str,
                  k_upos: int, k_sem: int, k_agr: int, k_subj: int, k_obj: int,
                  same_clause: bool, use_pos: bool) -> bool:
    """Hard blocks from lexical features and binding theory. With use_pos=False (features_only) the
    roles are read from the features alone (a word with selectional restrictions acts as a verb, a word
    with semantic or agreement features as a nominal)."""
    if use_pos:
        q_verb, k_verb = q_upos == VERB, k_upos == VERB
        q_nom, k_nom = bool(NOMINAL_MASK >> q_upos & 1), bool(NOMINAL_MASK >> k_upos & 1)
        q_pron = q_upos == PRON
    else:
        q_verb, k_verb = bool(q_subj or q_obj), bool(k_subj or k_obj)
        q_nom, k_nom = bool(q_sem or q_agr) and not q_verb, bool(k_sem or k_agr) and not k_verb
        q_pron = bool(q_agr & _PERSONS)
    # Selectional restrictions (VerbNet): only inside one clause, where the nominal can be an argument.
    if same_clause:
        if q_verb and k_nom and q_subj and k_sem and not k_sem & q_subj:
            return True                                # "the idea ate": idea cannot be eat's subject
        if q_nom and k_verb and k_obj and q_sem and not q_sem & k_obj:
            return True                                # "ate the idea": idea cannot be eat's object
    if q_pron and k_nom:
        if agreement_conflict(q_agr, q_sem, k_agr, k_sem):
            return True
        if q_agr & _REFL and not same_clause:
            return True                                # Principle A: a reflexive is bound locally
        if not q_agr & _REFL and same_clause and q_text in OBJECT_PRONOUNS:
            return True                                # Principle B: a pronoun is free locally
    return False
