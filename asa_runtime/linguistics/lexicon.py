"""Lexical features per word: semantic bits of nominals, agreement bits, verbs' selectional restrictions.

The table is built once from WordNet + VerbNet by `python -m training.build_lexicon` (see docs/lexicon.md) and
shipped as artifacts/lexicon.npz: a string table of surface forms, one row id per form, a small table of
distinct rows (noun entry id, verb entry id, proper-name entry id, flags) and a small table of distinct
entries. Loading turns it into one dict form -> (noun, verb, propn, flags), so `lookup` is a couple of dict
probes. Pronouns are a closed class and live here, in code. Depends only on numpy and the stdlib.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import AGR_BIT, SEM_BIT, UPOS_ID

ARTIFACT = Path(__file__).with_name("artifacts") / "lexicon.npz"
FORMAT = "asa-lexicon/1"


@dataclass(frozen=True)
class LexEntry:
    sem: int = 0        # SEMANTIC bits (features.SEM_BIT) of a nominal; 0 = unknown
    agr: int = 0        # AGREEMENT bits (features.AGR_BIT); a dimension with no bit set is unknown ("you")
    subj_req: int = 0   # verbs: the subject must have at least one of these SEMANTIC bits (0 = free)
    obj_req: int = 0    # verbs: the direct object must have at least one of these SEMANTIC bits (0 = free)

    def __bool__(self) -> bool:
        return bool(self.sem or self.agr or self.subj_req or self.obj_req)


EMPTY = LexEntry()


def _sem(*names: str) -> int:
    bits = 0
    for n in names:
        bits |= SEM_BIT[n]
    return bits


def _agr(*names: str) -> int:
    bits = 0
    for n in names:
        bits |= AGR_BIT[n]
    return bits


# Persons get the same bits a WordNet person noun gets (person.n.01 lies under organism and physical_entity),
# so "he" satisfies a verb that wants a CONCRETE object exactly as "the man" does.
PERSON = _sem("HUMAN", "ANIMATE", "CONCRETE")

# Closed class: form -> (sem, agreement names). Number left unset where English does not mark it (you, who),
# so agreement checks treat it as compatible with both. Archaic forms (thou, thee, ye) because the training
# prose is 19th-century.
_PRONOUNS: dict[str, tuple[int, tuple[str, ...]]] = {}


def _add(forms: str, sem: int, *agr: str) -> None:
    for f in forms.split():
        _PRONOUNS[f] = (sem, agr)


_add("i me my mine", PERSON, "PERS1", "SING")
_add("myself", PERSON, "PERS1", "SING", "REFLEXIVE")
_add("we us our ours", PERSON, "PERS1", "PLUR")
_add("ourselves", PERSON, "PERS1", "PLUR", "REFLEXIVE")
_add("you your yours", PERSON, "PERS2")
_add("yourself", PERSON, "PERS2", "SING", "REFLEXIVE")
_add("yourselves", PERSON, "PERS2", "PLUR", "REFLEXIVE")
_add("thou thee thy thine", PERSON, "PERS2", "SING")
_add("thyself", PERSON, "PERS2", "SING", "REFLEXIVE")
_add("ye", PERSON, "PERS2", "PLUR")
_add("he him his", PERSON, "PERS3", "SING", "MASC")
_add("himself", PERSON, "PERS3", "SING", "MASC", "REFLEXIVE")
_add("she her hers", PERSON, "PERS3", "SING", "FEM")
_add("herself", PERSON, "PERS3", "SING", "FEM", "REFLEXIVE")
_add("it its", 0, "PERS3", "SING", "NEUT")
_add("itself", 0, "PERS3", "SING", "NEUT", "REFLEXIVE")
_add("they them their theirs", 0, "PERS3", "PLUR")
_add("themselves", 0, "PERS3", "PLUR", "REFLEXIVE")
_add("themself", PERSON, "PERS3", "SING", "REFLEXIVE")
_add("who whom whose whoever whomever", PERSON, "PERS3")
_add("one", 0, "PERS3", "SING")
_add("oneself", PERSON, "PERS3", "SING", "REFLEXIVE")
_add("someone somebody anyone anybody everyone everybody nobody no-one", PERSON, "PERS3", "SING")
_add("something anything everything nothing", 0, "PERS3", "SING", "NEUT")
_add("this that", 0, "PERS3", "SING")
_add("these those", 0, "PERS3", "PLUR")

PRONOUNS: dict[str, LexEntry] = {f: LexEntry(sem, _agr(*agr)) for f, (sem, agr) in _PRONOUNS.items()}

# (noun reading, verb reading, proper-name reading, flags): one shared tuple per distinct row
Row = tuple[LexEntry, LexEntry, LexEntry, int]
IS_NOUN, IS_VERB, IS_PROPN = 1, 2, 4  # flags: WordNet has the form as a noun / verb / capitalised noun

# lookup slots: which reading of a form a UPOS asks for
_NOUN, _VERB, _PROPN, _PRON = 0, 1, 2, 3
_SLOT = {UPOS_ID["NOUN"]: _NOUN, UPOS_ID["VERB"]: _VERB, UPOS_ID["PROPN"]: _PROPN, UPOS_ID["PRON"]: _PRON}
_SING, _PLUR = AGR_BIT["SING"], AGR_BIT["PLUR"]
# fallback for unknown nouns in -er(s) whose stem is a verb ("blogger"): an agent, almost always a person
_AGENT = PERSON
_GERUND = _sem("EVENT", "ABSTRACT")  # fallback for unknown nouns in -ing whose stem is a verb
_CACHE_MAX = 200_000


class Lexicon:
    """Word -> LexEntry. `lookup` never raises; unknown input gives the empty entry."""

    def __init__(self, forms: dict[str, Row], meta: dict | None = None):
        self._forms = forms
        self.meta = meta or {}
        self._cache: dict[tuple[str, int], LexEntry] = {}

    def __len__(self) -> int:
        return len(self._forms)

    def __contains__(self, word: str) -> bool:
        return isinstance(word, str) and _norm(word) in self._forms

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        path = Path(path) if path is not None else ARTIFACT
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} table (format={meta.get('format')!r})")
            forms = z["forms"].tobytes().decode("utf-8").split("\n")
            entries = [LexEntry(*map(int, e)) for e in z["entries"].tolist()]
            rows = [(entries[n], entries[v], entries[p], fl) for n, v, p, fl in z["rows"].tolist()]
            row_of = z["row_of"].tolist()
        if len(forms) != len(row_of):
            raise ValueError(f"{path}: {len(forms)} forms but {len(row_of)} rows")
        return cls(dict(zip(forms, map(rows.__getitem__, row_of))), meta)

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Write the npz artifact (no pickle): forms as one UTF-8 blob, a row id per form, rows, entries."""
        entries: dict[LexEntry, int] = {EMPTY: 0}
        rows: dict[tuple[int, int, int, int], int] = {}
        forms = sorted(self._forms)
        row_of = np.empty(len(forms), np.int32)
        for n, f in enumerate(forms):
            if "\n" in f:
                raise ValueError(f"form {f!r} contains a newline")
            noun, verb, propn, flags = self._forms[f]
            r = (*(entries.setdefault(e, len(entries)) for e in (noun, verb, propn)), int(flags))
            row_of[n] = rows.setdefault(r, len(rows))  # type: ignore[arg-type]
        meta = {**self.meta, **(meta or {}), "format": FORMAT}
        ent = np.array([[e.sem, e.agr, e.subj_req, e.obj_req] for e in entries], np.int32)
        row_arr = np.array(list(rows), np.int32).reshape(-1, 4)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # a file object keeps np.savez from appending ".npz" to other suffixes
            np.savez_compressed(
                fh,
                forms=np.frombuffer("\n".join(forms).encode("utf-8"), np.uint8),
                row_of=row_of.astype(np.uint16 if len(rows) < 65536 else np.int32),
                rows=row_arr.astype(np.uint16 if len(entries) < 65536 else np.int32),
                entries=ent,
                meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8),
            )

    def lookup(self, word: str, upos: int) -> LexEntry:
        """Features of `word` (as written) read as part of speech `upos` (a features.UPOS id).

        NOUN -> noun reading, PROPN -> proper-name reading (WordNet's capitalised senses, corpus names),
        PRON -> the closed pronoun table, then the noun reading; VERB -> selectional restrictions. Every other
        UPOS (AUX included: auxiliaries select nothing) -> the empty entry."""
        try:
            slot = _SLOT.get(upos)
            if slot is None:
                return EMPTY
            key = word.lower()
            if "\u2019" in key:
                key = key.replace("\u2019", "'")
            if slot == _PRON:
                e = PRONOUNS.get(key)
                if e is not None:
                    return e
                slot = _NOUN
            row = self._forms.get(key)
            if row is not None:
                return row[slot]
            if key in PRONOUNS:  # "something", "herself" mis-tagged as NOUN: still the pronoun's features
                return PRONOUNS[key]
            ck = (key, slot)
            e = self._cache.get(ck)
            if e is None:
                e = self._fallback(key, slot)
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[ck] = e
            return e
        except Exception:  # noqa: BLE001 - odd input (non-str word, unhashable upos) is an unknown word
            return EMPTY

    def is_noun(self, word: str) -> bool:
        """Whether WordNet knows `word` (as written, or lower-cased) as a noun form; no fallback."""
        row = self._forms.get(_norm(word)) if isinstance(word, str) else None
        return row is not None and bool(row[3] & IS_NOUN)

    def is_verb(self, word: str) -> bool:
        """Whether WordNet knows `word` as a verb form (restricted or not); no fallback."""
        row = self._forms.get(_norm(word)) if isinstance(word, str) else None
        return row is not None and bool(row[3] & IS_VERB)

    def _get(self, key: str, slot: int) -> LexEntry | None:
        row = self._forms.get(key)
        return None if row is None else row[slot]

    def _fallback(self, key: str, slot: int) -> LexEntry:
        """Forms not in the table: possessive, hyphenated compound, then suffix stripping."""
        if key.endswith(("'s", "'")):
            base = key[:-2] if key.endswith("'s") else key[:-1]
            row = self._forms.get(base)
            return row[slot] if row is not None else EMPTY
        if slot == _PROPN:
            return EMPTY
        if "-" in key.strip("-"):  # "sea-captain" reads like its head, "well-dressed" like its last part
            head = key.rstrip("-").rsplit("-", 1)[1]
            row = self._forms.get(head)
            if row is not None:
                return row[slot]
            return self._fallback(head, slot) if head and "-" not in head else EMPTY
        if slot == _NOUN:
            return self._noun_fallback(key)
        for stem in _verb_stems(key):
            e = self._get(stem, _VERB)
            if e is not None:
                return e
        return EMPTY

    def _noun_fallback(self, key: str) -> LexEntry:
        plural = key.endswith("s") and not key.endswith("ss")
        stems = _plural_stems(key) if plural else ()
        for stem in stems:
            e = self._get(stem, _NOUN)
            if e:
                return LexEntry(e.sem, (e.agr & ~_SING) | _PLUR, 0, 0)
        num = _PLUR if plural else _SING
        base = key[:-1] if plural else key
        if base.endswith("er") and len(base) > 4:  # agent noun of a known verb
            for stem in _er_stems(base):
                if self.is_verb(stem):
                    return LexEntry(_AGENT, num, 0, 0)
        if base.endswith("ing") and len(base) > 5:
            for stem in _ing_stems(base):
                if self.is_verb(stem):
                    return LexEntry(_GERUND, num, 0, 0)
        return EMPTY


def _norm(word: str) -> str:
    return word.lower().replace("\u2019", "'")


def _plural_stems(key: str) -> list[str]:
    out = []
    if key.endswith("ies") and len(key) > 4:
        out.append(key[:-3] + "y")
    if key.endswith("es") and len(key) > 3:
        out.append(key[:-2])
    out.append(key[:-1])
    return out


def _undouble(stem: str) -> list[str]:
    # "stopp" -> "stop": doubled final consonant before -ed/-ing/-er
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "aeiouls":
        return [stem[:-1]]
    return []


def _ing_stems(base: str) -> list[str]:
    s = base[:-3]
    return [s, s + "e", *_undouble(s)]


def _er_stems(base: str) -> list[str]:
    s = base[:-2]
    return [s, s + "e", *_undouble(s)]


def _verb_stems(key: str) -> list[str]:
    out: list[str] = []
    if key.endswith("ies") and len(key) > 4:
        out.append(key[:-3] + "y")
    if key.endswith("es") and len(key) > 3:
        out.append(key[:-2])
    if key.endswith("s") and not key.endswith("ss") and len(key) > 2:
        out.append(key[:-1])
    if key.endswith("ied") and len(key) > 4:
        out.append(key[:-3] + "y")
    if key.endswith("ed") and len(key) > 3:
        s = key[:-2]
        out += [s, s + "e", *_undouble(s)]
    if key.endswith("ing") and len(key) > 4:
        out += _ing_stems(key)
    return out
