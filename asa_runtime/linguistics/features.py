"""The per-token feature vocabulary: UPOS ids and lexical feature bits. One place, shared by the
tagger, the lexicon builder, the bonding rules and the CLI."""
from __future__ import annotations

# Universal POS tags (UD v2), in a fixed order: the id of a tag is its index here.
UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X")
UPOS_ID = {t: i for i, t in enumerate(UPOS)}
N_UPOS = len(UPOS)

# 15 semantic (selectional) features of nominals, derived from WordNet hypernyms at build time.
SEMANTIC = ("HUMAN", "ANIMATE", "ANIMAL", "PLANT", "CONCRETE", "ABSTRACT", "LOCATION", "EVENT", "TIME",
            "ORGANIZATION", "ARTIFACT", "FOOD", "SUBSTANCE", "COMMUNICATION", "QUANTITY")
SEM_BIT = {name: 1 << i for i, name in enumerate(SEMANTIC)}
SEM_MASK = (1 << len(SEMANTIC)) - 1

# Agreement features (pronouns from a closed table; nouns' number/gender from the lexicon).
AGREEMENT = ("PERS1", "PERS2", "PERS3", "SING", "PLUR", "MASC", "FEM", "NEUT", "REFLEXIVE")
AGR_BIT = {name: 1 << i for i, name in enumerate(AGREEMENT)}


def sem_names(bits: int) -> list[str]:
    return [n for n in SEMANTIC if bits & SEM_BIT[n]]


def agr_names(bits: int) -> list[str]:
    return [n for n in AGREEMENT if bits & AGR_BIT[n]]
