"""Build the shipped lexicon (asa_runtime/linguistics/artifacts/lexicon.npz) from WordNet 3.0 and VerbNet.

    python -m training.build_lexicon [--nltk-data DIR] [--out PATH] [--prose-top N] [--coverage-tokens N]

Inputs (build time only, read through NLTK's corpus readers): corpora/wordnet and corpora/verbnet34 (else
verbnet3, else verbnet) on nltk.data.path: --nltk-data first, then $NLTK_DATA, then ../shared/data/nltk_data
next to the repo, then NLTK's usual places (so `nltk.download('wordnet')` works too). The English prose corpus
(../shared/data/english_prose, optional) gives frequent word forms, person names and the coverage sample.
What every feature means and why: docs/lexicon.md. The two maps below are the one place the mapping lives.
"""
from __future__ import annotations

import json
import lzma
import os
import re
import time
from collections import Counter
from pathlib import Path

import click

from asa_runtime.linguistics.features import AGR_BIT, SEM_BIT, SEMANTIC, UPOS_ID, agr_names, sem_names
from asa_runtime.linguistics.lexicon import ARTIFACT, EMPTY, IS_NOUN, IS_PROPN, IS_VERB, LexEntry, Lexicon

REPO = Path(__file__).resolve().parents[1]
SHARED_NLTK = REPO.parent / "shared" / "data" / "nltk_data"
SHARED_PROSE = REPO.parent / "shared" / "data" / "english_prose"

# SEMANTIC feature -> WordNet synsets whose hyponym subtrees (instances included) carry it; a name starting
# with "!" removes its subtree again. A noun sense has the feature iff it or one of its hypernyms is listed.
SEM_SYNSETS: dict[str, tuple[str, ...]] = {
    # people.n.01 ("people", "folk") is a group, hence an abstraction in WordNet; "the people ate" must pass
    "HUMAN": ("person.n.01", "people.n.01"),
    # not organism.n.01: plants, fungi and microbes are organisms but never the agent of "eat", "say", "want"
    "ANIMATE": ("person.n.01", "people.n.01", "animal.n.01", "spiritual_being.n.01"),
    "ANIMAL": ("animal.n.01",),
    "PLANT": ("plant.n.02",),
    # physical_entity minus process.n.06 (storms, light, growth: physical processes, not things you can hold)
    "CONCRETE": ("physical_entity.n.01", "!process.n.06"),
    "ABSTRACT": ("abstraction.n.06",),
    "LOCATION": ("location.n.01", "body_of_water.n.01", "geological_formation.n.01", "land.n.04",
                 "area.n.05"),
    "EVENT": ("event.n.01", "atmospheric_phenomenon.n.01"),
    "TIME": ("time_period.n.01", "time_unit.n.01", "point.n.06", "clock_time.n.01"),
    "ORGANIZATION": ("organization.n.01", "social_group.n.01"),
    "ARTIFACT": ("artifact.n.01",),
    "FOOD": ("food.n.01", "food.n.02"),
    "SUBSTANCE": ("matter.n.03",),
    "COMMUNICATION": ("communication.n.02",),
    # measure.n.02 = quantity/amount; time periods live there too but are TIME, not amounts
    "QUANTITY": ("measure.n.02", "!time_period.n.01", "!point.n.06"),
}
MALE, FEMALE, PERSON = "male.n.02", "female.n.02", "person.n.01"

# VerbNet selectional restriction type (+value) -> SEMANTIC bits that satisfy it. A '-' restriction (-animate,
# -region) cannot be said as "at least one of these bits" and gives no restriction; types not listed (plural,
# refl, force, sound, ...) give none either.
VN_RESTRICTIONS: dict[str, tuple[str, ...]] = {
    "animate": ("ANIMATE",),
    "human": ("HUMAN",),
    "animal": ("ANIMAL",),
    "biotic": ("ANIMATE", "PLANT"),
    "organization": ("ORGANIZATION",),
    "concrete": ("CONCRETE",),
    "physical": ("CONCRETE",),
    "solid": ("CONCRETE",),
    "body_part": ("CONCRETE",),
    "elongated": ("CONCRETE",),
    "pointy": ("CONCRETE",),
    "nonrigid": ("CONCRETE",),
    "rigid": ("CONCRETE",),
    "refl": (),
    "machine": ("ARTIFACT",),
    "vehicle": ("ARTIFACT",),
    "vehicle_part": ("ARTIFACT",),
    "garment": ("ARTIFACT",),
    "tool": ("ARTIFACT",),
    "scalar": ("QUANTITY",),
    "currency": ("QUANTITY", "ARTIFACT"),
    "comestible": ("FOOD",),
    "substance": ("SUBSTANCE",),
    "liquid": ("SUBSTANCE",),
    "location": ("LOCATION",),
    "loc": ("LOCATION",),
    "region": ("LOCATION",),
    "place": ("LOCATION",),
    "abstract": ("ABSTRACT",),
    "state": ("ABSTRACT",),
    "eventive": ("EVENT",),
    "time": ("TIME",),
    "communication": ("COMMUNICATION",),
    "question": ("COMMUNICATION",),
    # intentional control: a person, an organisation, or a machine acting on its own
    "int_control": ("ANIMATE", "ORGANIZATION", "ARTIFACT"),
}
# Conjoined restrictions (+comestible & +solid) keep the specific ones: CONCRETE/ABSTRACT add nothing.
GENERAL = SEM_BIT["CONCRETE"] | SEM_BIT["ABSTRACT"]
# Fallback when a class has no frames to read positions from: roles by name (VerbNet 2.1 has Actor1, Theme1)
SUBJECT_ROLES = ("Agent", "Actor", "Actor1", "Experiencer")
OBJECT_ROLES = ("Patient", "Patient1", "Theme", "Theme1")

FREE_WINS = True  # a verb class that leaves a position unrestricted lifts the lemma's restriction there
SENSE_SHARE = 0.15  # noun senses holding >= this share of the lemma's SemCor counts are united
PLURAL_ONLY = {"police", "cattle", "folk", "clergy", "gentry", "livestock", "vermin", "poultry", "infantry"}
VERBNETS = ("verbnet34", "verbnet3", "verbnet")  # newest first
_GENDER_RE = re.compile(r"^(?:an? |the )?(?:\w+ ){0,2}(male|man|boy|female|woman|girl)\b")
_WORD_RE = re.compile(r"[A-Za-z]+(?:['\u2019-][A-Za-z]+)*")


def _bits(names, table=SEM_BIT) -> int:
    out = 0
    for n in names:
        out |= table[n]
    return out


# ---------------------------------------------------------------------------------------------- NLTK data
def setup_nltk_data(nltk_data: str | None = None) -> list[str]:
    """nltk.data.path = [--nltk-data] + $NLTK_DATA (nltk put it first already) + shared data + defaults."""
    import nltk

    paths = list(nltk.data.path)
    env = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    front = [nltk_data] if nltk_data else []
    front += [p for p in env if p not in front]
    if SHARED_NLTK.is_dir():
        front.append(str(SHARED_NLTK))
    nltk.data.path[:] = front + [p for p in paths if p not in front]
    return nltk.data.path


def load_wordnet():
    from nltk.corpus import wordnet as wn

    try:
        wn.ensure_loaded()
    except LookupError as e:
        raise click.ClickException(
            "WordNet not found on nltk.data.path; pass --nltk-data DIR or set NLTK_DATA "
            "(or run nltk.download('wordnet') once)") from e
    return wn


def load_verbnet():
    """The newest VerbNet NLTK can find: (reader, name). Only fileids()/xml() are used: NLTK's lemma index
    regex does not match VerbNet 3.4's attribute order, the XML itself reads fine."""
    from nltk.corpus.reader import VerbnetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    for name in VERBNETS:
        vn = LazyCorpusLoader(name, VerbnetCorpusReader, r"(?!\.).*\.xml")
        try:
            vn.fileids()
        except LookupError:
            continue
        return vn, name
    raise click.ClickException("VerbNet not found on nltk.data.path (looked for " + ", ".join(VERBNETS) + ")")


# ---------------------------------------------------------------------------------------------- nouns
class NounFeatures:
    """SEMANTIC bits and gender of WordNet noun synsets and lemmas."""

    def __init__(self, wn):
        self.wn = wn
        self._rules = [(SEM_BIT[f], {n for n in names if n[0] != "!"}, {n[1:] for n in names if n[0] == "!"})
                       for f, names in SEM_SYNSETS.items()]
        for _, inc, exc in self._rules:  # fail early on a typo in the map
            for n in inc | exc:
                wn.synset(n)
        self._watch = set().union(*(inc | exc for _, inc, exc in self._rules)) | {MALE, FEMALE, PERSON}
        self._roots: dict[str, frozenset] = {}
        self._sem: dict[str, int] = {}

    def roots(self, synset) -> frozenset:
        """The mapped synsets among `synset` and all its (instance) hypernyms; memoised."""
        name = synset.name()
        r = self._roots.get(name)
        if r is None:
            r = frozenset({name} & self._watch).union(
                *(self.roots(h) for h in synset.hypernyms() + synset.instance_hypernyms()))
            self._roots[name] = r
        return r

    def sem(self, synset) -> int:
        name = synset.name()
        bits = self._sem.get(name)
        if bits is None:
            r = self.roots(synset)
            bits = _or(b for b, inc, exc in self._rules if r & inc and not r & exc)
            self._sem[name] = bits
        return bits

    def is_person(self, synset) -> bool:
        return PERSON in self.roots(synset)

    def gender(self, synset) -> int:
        """MASC/FEM for person senses: under male/female person, or defined as "a male ...", "a woman
        who ..." (king.n.01 "a male sovereign" has no male.n.02 hypernym): the sense or a person hypernym."""
        r = self.roots(synset)
        if PERSON not in r:
            return 0
        if MALE in r:
            return AGR_BIT["MASC"]
        if FEMALE in r:
            return AGR_BIT["FEM"]
        for s in [synset, *synset.closure(lambda x: x.hypernyms() + x.instance_hypernyms())]:
            if not self.is_person(s) or s.name() == PERSON:
                continue
            m = _GENDER_RE.match(s.definition())
            if m:
                return AGR_BIT["MASC"] if m.group(1) in ("male", "man", "boy") else AGR_BIT["FEM"]
        return 0

    def choose(self, lemmas) -> list:
        """The senses a lemma is read as: those with >= SENSE_SHARE of its tagged (SemCor) counts; sense 1
        when WordNet has no counts for it."""
        if not lemmas:
            return []
        counts = [lm.count() for lm in lemmas]
        total = sum(counts)
        if total == 0:
            return [lemmas[0].synset()]
        return [lm.synset() for lm, c in zip(lemmas, counts) if c >= SENSE_SHARE * total]

    def entry(self, synsets) -> tuple[int, int, bool]:
        """(sem, gender bits, plural-only) of the union of `synsets`."""
        sem, gen, plural = 0, 0, False
        for s in synsets:
            sem |= self.sem(s)
            gen |= self.gender(s)
            plural |= s.definition().startswith("(plural)")
        if gen == AGR_BIT["MASC"] | AGR_BIT["FEM"]:
            gen = 0  # senses disagree: leave gender open
        return sem, gen, plural

    def common(self, lemma: str) -> tuple[int, int, bool] | None:
        """Noun reading of a lemma from its lower-case senses (all senses for a name-only one like Paris)."""
        lms = self.wn.lemmas(lemma, "n")
        if not lms:
            return None
        low = [lm for lm in lms if not lm.name()[:1].isupper()] or lms
        sem, gen, plural = self.entry(self.choose(low))
        return sem, gen, plural or lemma in PLURAL_ONLY

    def proper(self, lemma: str) -> tuple[int, int] | None:
        """Proper-name reading: WordNet's capitalised senses (Paris, John, Elizabeth). The first (or most
        frequent) one, plus the person bits when any of them is a person (names in prose are mostly
        people)."""
        lms = [lm for lm in self.wn.lemmas(lemma, "n") if lm.name()[:1].isupper()]
        if not lms:
            return None
        chosen = self.choose(lms)
        persons = [lm.synset() for lm in lms if self.is_person(lm.synset())]
        sem, gen, _ = self.entry(chosen + persons[:1] if persons and persons[0] not in chosen else chosen)
        if persons:  # John: King John is male, the apostle's gender is not stated -> MASC; mixed -> open
            g = {self.gender(s) for s in persons} - {0}
            gen = g.pop() if len(g) == 1 else 0
        return sem, gen


# ---------------------------------------------------------------------------------------------- verbs
def restriction_mask(selrestrs) -> int:
    """SEMANTIC bits for a <SELRESTRS> element (nested ones allowed); 0 = no usable restriction."""
    if selrestrs is None:
        return 0
    parts = []
    for child in selrestrs:
        if child.tag == "SELRESTR":
            ok = child.get("Value") == "+"
            parts.append(_bits(VN_RESTRICTIONS.get(child.get("type", ""), ())) if ok else 0)
        elif child.tag == "SELRESTRS":
            parts.append(restriction_mask(child))
    if not parts:
        return 0
    if selrestrs.get("logic") == "or":
        return 0 if 0 in parts else _or(parts)  # an unrestricted alternative lifts the restriction
    specific = [p for p in parts if p and not p & GENERAL]
    return _or(specific) if specific else _or(parts)


def _or(masks) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


def _frame_roles(cls) -> tuple[set[str], set[str]]:
    """Roles that frames put in subject position (the NP before the verb) and direct-object position (an NP
    right after the verb that is not a clause; of two NPs, "give [him] [a book]", the second)."""
    subj, obj = set(), set()
    for syn in cls.findall("FRAMES/FRAME/SYNTAX"):
        items = list(syn)
        for i, el in enumerate(items):
            if el.tag != "VERB":
                continue
            nps = [x for x in items[:i] if x.tag == "NP"]
            if nps:
                subj.add(nps[-1].get("value", ""))
            if i + 1 < len(items) and items[i + 1].tag == "NP":
                np_ = items[i + 2] if i + 2 < len(items) and items[i + 2].tag == "NP" else items[i + 1]
                clause = any(r.get("Value") == "+" for r in np_.iter("SYNRESTR"))
                if not clause:
                    obj.add(np_.get("value", ""))
            break
    return subj, obj


def _position_mask(roles: dict[str, int], names: set[str]) -> int:
    """Restriction of a syntactic position filled by any of `names`: 0 if one of them is unrestricted."""
    masks = [roles.get(r, 0) for r in names]
    return 0 if not masks or 0 in masks else _or(masks)


def verb_restrictions(vn, wn=None, only: set[str] | None = None) -> tuple[dict[str, tuple[int, int]], dict]:
    """verb lemma -> (subj_req, obj_req). Per class: the roles its frames put in subject / direct-object
    position (frames and role restrictions are inherited by subclasses; a subclass may restrict a role
    further); the position is restricted only if every role found there is. Per lemma: its classes whose
    member WordNet senses hold >= SENSE_SHARE of the lemma's tagged counts (all classes when WordNet gives no
    counts), as for nouns; the union over those, except that one which has the position but leaves it free
    lifts it (FREE_WINS): the main "buy" class leaves its Theme free, so "buy a book" must not look like a
    violation because a rarer "buy" class wants an organisation. Classes without such a frame (intransitive
    ones, for the object) do not vote."""
    acc: dict[str, list] = {}  # lemma -> [(subj, obj, has subject, has object, wn sense keys), ...]
    stats = Counter()

    def walk(cls, roles: dict[str, int], frames_subj: set, frames_obj: set, has_frames: bool):
        roles = dict(roles)
        for tr in cls.findall("THEMROLES/THEMROLE"):
            m = restriction_mask(tr.find("SELRESTRS"))
            if m or tr.get("type") not in roles:
                roles[tr.get("type")] = m
        s, o = _frame_roles(cls)
        s, o = s | frames_subj, o | frames_obj
        has_frames = has_frames or bool(cls.findall("FRAMES/FRAME"))
        if not has_frames:  # no syntax to read positions from: fall back to role names
            s, o = set(SUBJECT_ROLES) & set(roles), set(OBJECT_ROLES) & set(roles)
        subj, obj = _position_mask(roles, s), _position_mask(roles, o)
        stats["classes"] += 1
        stats["classes_subj_restricted"] += bool(subj)
        stats["classes_obj_restricted"] += bool(obj)
        for m in cls.findall("MEMBERS/MEMBER"):
            name = m.get("name", "").lstrip("?").lower()
            if not name or "_" in name or " " in name or (only is not None and name not in only):
                continue
            acc.setdefault(name, []).append((subj, obj, bool(s), bool(o), m.get("wn", "").split()))
        for sub in cls.findall("SUBCLASSES/VNSUBCLASS"):
            walk(sub, roles, s, o, has_frames)

    for fid in vn.fileids():
        walk(vn.xml(fid), {}, set(), set(), False)
    out = {}
    for name, classes in acc.items():
        if wn is not None:
            total = sum(lm.count() for lm in wn.lemmas(name, "v"))
            weights = [sum(_sense_count(wn, k) for k in keys) for *_, keys in classes]
            chosen = [c for c, w in zip(classes, weights) if total and w >= SENSE_SHARE * total]
            stats["lemmas_by_sense"] += bool(chosen)
            classes = chosen or classes
        subj = _or(c[0] for c in classes)
        obj = _or(c[1] for c in classes)
        if FREE_WINS and any(c[2] and not c[0] for c in classes):
            subj = 0
        if FREE_WINS and any(c[3] and not c[1] for c in classes):
            obj = 0
        out[name] = (subj, obj)
    stats["lemmas"] = len(out)
    stats["lemmas_subj_restricted"] = sum(1 for a, _ in out.values() if a)
    stats["lemmas_obj_restricted"] = sum(1 for _, b in out.values() if b)
    return out, dict(stats)


def _sense_count(wn, key: str) -> int:
    """SemCor count of a VerbNet member's WordNet sense key ("give%2:40:00"); 0 if WordNet lacks it."""
    try:
        return wn.lemma_from_key(key if key.endswith("::") else key + "::").count()
    except Exception:  # noqa: BLE001 - stale or malformed sense keys exist in VerbNet
        return 0


# ---------------------------------------------------------------------------------------------- vocabulary
def _plurals(w: str) -> list[str]:
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return [w + "es"]
    if w.endswith("y") and len(w) > 1 and w[-2] not in "aeiou":
        return [w[:-1] + "ies"]
    if w.endswith("man"):  # woman/women, fisherman/fishermen (morphy's rule, not in noun.exc); human/humans
        return [w[:-3] + "men", w + "s"]
    if w.endswith(("f", "fe")):  # wife/wives, wolf/wolves; roof/roofs
        return [w.rsplit("f", 1)[0] + "ves", w + "s"]
    return [w + "s"]


def _verb_forms(w: str) -> list[str]:
    out = _plurals(w)[-1:]  # 3rd person singular: the regular plural spelling
    if w.endswith("e"):
        out += [w + "d", w[:-1] + "ing"]
    elif w.endswith("y") and len(w) > 1 and w[-2] not in "aeiou":
        out += [w[:-1] + "ied", w + "ing"]
    else:
        out += [w + "ed", w + "ing"]
    return out


def _ok(lemma: str) -> bool:
    return "_" not in lemma and " " not in lemma and "\n" not in lemma


def prose_files(prose_dir: Path) -> list[Path]:
    return sorted(prose_dir.glob("*/*.jsonl.xz")) if prose_dir.is_dir() else []


_TITLES_M = ("Mr", "Sir", "Lord", "Uncle", "Monsieur", "Master", "Mister", "Colonel", "Captain", "Father",
             "Brother")
_TITLES_F = ("Mrs", "Miss", "Ms", "Lady", "Aunt", "Madame", "Mademoiselle", "Mistress", "Mother", "Sister")
_TITLES = "|".join(_TITLES_M + _TITLES_F + ("Dr", "Doctor"))
_TITLE_RE = re.compile(r"\b(" + _TITLES + r")\.? ([A-Z][a-z]{2,})\b")
_SPEECH = "said|cried|replied|asked|answered|exclaimed|returned|whispered|continued"
_SPEECH_RE = re.compile(
    r"\b(?:" + _SPEECH + r") ([A-Z][a-z]{2,})\b|\b([A-Z][a-z]{2,}) (?:" + _SPEECH + r")\b")
_NAME_PRON_RE = re.compile(  # a capitalised word, then the nearest he/she within the same clause
    r"\b([A-Z][a-z]{2,})\b[^.!?;:\"\u201c\u201d\n]{0,50}?\b(he|him|his|himself|she|her|herself)\b")
_MASC_PRON = {"he", "him", "his", "himself"}
NAME_MIN_HITS = 5      # title or speech-verb contexts ("Mrs. Dombey", "said Agnes") that make a word a name
NAME_CAP_RATIO = 3     # and it must be capitalised at least this many times as often as not
PLACE_NAME_SHARE = 0.1  # a WordNet place becomes a person only if >= 10% of its uses are name contexts


def prose_counts(files: list[Path], log=print) -> tuple[Counter, list[str], dict[str, int]]:
    """Lower-cased word-form counts over the whole corpus, a spread sample of paragraphs for coverage, and the
    person names the corpus itself attests (name -> MASC/FEM/0), see person_names()."""
    cased: Counter = Counter()
    hits: Counter = Counter()
    titles: dict[str, list[int]] = {}  # name -> [masc, fem] title votes
    prons: dict[str, list[int]] = {}  # name -> [masc, fem] votes of the nearest he/she after it
    sample: list[str] = []
    for path in files:
        with lzma.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line)["text"].replace("\u2019", "'")
                cased.update(_WORD_RE.findall(text))
                for m in _TITLE_RE.finditer(text):
                    hits[m.group(2)] += 1
                    v = titles.setdefault(m.group(2), [0, 0])
                    if m.group(1) in _TITLES_M:
                        v[0] += 1
                    elif m.group(1) in _TITLES_F:
                        v[1] += 1
                for m in _SPEECH_RE.finditer(text):
                    hits[m.group(1) or m.group(2)] += 1
                for m in _NAME_PRON_RE.finditer(text):
                    v = prons.setdefault(m.group(1), [0, 0])
                    v[0 if m.group(2) in _MASC_PRON else 1] += 1
                paras = text.split("\n\n")
                mid = len(paras) // 2
                sample.extend(p for p in paras[mid: mid + 40] if p.strip())
        log(f"  read {path.name}: {sum(cased.values()):,} word tokens so far")
    counts: Counter = Counter()
    for w, c in cased.items():
        counts[w.lower()] += c
    return counts, sample, person_names(cased, hits, titles, prons)


def _side(v, share: float, least: int) -> int:
    """0 = masc, 1 = fem, -1 = undecided, for [masc, fem] votes."""
    m, f = v
    if m + f >= least and max(m, f) >= share * (m + f):
        return 0 if m > f else 1
    return -1


def person_names(cased: Counter, hits: Counter, titles: dict, prons: dict) -> dict[str, tuple[int, float]]:
    """Words the prose uses as person names -> (gender bits, share of their occurrences in a name context).
    A name: >= NAME_MIN_HITS times after a title or beside a speech verb, and capitalised >= NAME_CAP_RATIO
    times as often as lower-case (so "Rose", "Bill" stay nouns). Gender: a word never seen after a title (a
    first name: Agnes) from the nearest following he/she (>= 85% of >= 6 votes); a surname (seen after titles:
    "Mrs. Dombey", "Mr. Dombey") only when its titles are one-sided (>= 95%) and the pronouns do not
    disagree."""
    from asa_runtime.linguistics.lexicon import PRONOUNS

    out = {}
    gbit = (AGR_BIT["MASC"], AGR_BIT["FEM"])
    for name, n in hits.items():
        low = name.lower()
        if n < NAME_MIN_HITS or low in PRONOUNS or cased[name] < NAME_CAP_RATIO * cased.get(low, 0):
            continue
        t, p = titles.get(name, [0, 0]), prons.get(name, [0, 0])
        if sum(t):
            side = _side(t, 0.95, 1)
            ps = _side(p, 0.5, 4)
            side = side if ps in (-1, side) else -1
        else:
            side = _side(p, 0.85, 6)
        out[low] = (gbit[side] if side >= 0 else 0, n / max(cased[name], 1))
    return out


def build(wn, vn, extra_forms=(), names: dict[str, tuple[int, float]] | None = None,
          only_lemmas: set[str] | None = None, log=print) -> tuple[Lexicon, dict]:
    """The lexicon for WordNet's single-word noun and verb lemmas, their inflections and `extra_forms` (mapped
    back through morphy), plus corpus person `names` (name -> (gender bits, share of name contexts)).
    `only_lemmas` restricts it to those lemmas (tests build a tiny one)."""
    t0 = time.time()
    nf = NounFeatures(wn)
    vrest, vstats = verb_restrictions(vn, wn, only_lemmas)
    log(f"  verb restrictions: {vstats}")

    def keep(lemma):
        return _ok(lemma) and (only_lemmas is None or lemma in only_lemmas)

    nouns = {l for l in wn.all_lemma_names("n") if keep(l)}
    verbs = {l for l in wn.all_lemma_names("v") if keep(l)}
    forms: set[str] = set(nouns) | set(verbs)
    for lemma in nouns:
        forms.update(_plurals(lemma))
    for lemma in verbs:
        forms.update(_verb_forms(lemma))
    for pos, lem_set in (("n", nouns), ("v", verbs)):
        forms.update(f for f, bases in wn._exception_map[pos].items() if any(b in lem_set for b in bases))
    forms.update(f for f in extra_forms if _ok(f))
    log(f"  candidate forms: {len(forms):,}")

    noun_cache: dict[str, tuple | None] = {}
    propn_cache: dict[str, tuple | None] = {}
    agr_n = {n: AGR_BIT[n] for n in ("SING", "PLUR", "PERS3")}
    rows: dict[str, tuple] = {}
    for form in forms:
        flags = 0
        noun = verb = propn = EMPTY
        bases = [b for b in wn._morphy(form, "n") if b in nouns]
        if bases:
            base = form if form in bases else bases[0]
            if base not in noun_cache:
                noun_cache[base] = nf.common(base)
            feats = noun_cache[base]
            if feats is not None:
                sem, gen, plural_only = feats
                plural = base != form or plural_only
                if base == form and form.endswith("s") and len(bases) > 1:
                    # "glasses" is a lemma and the plural of "glass": the plural when "glass" is commoner
                    other = next(b for b in bases if b != form)
                    if _count(wn, other) >= _count(wn, form):
                        plural = True
                        sem, gen, _ = noun_cache.setdefault(other, nf.common(other)) or feats
                num = agr_n["PLUR"] if plural else agr_n["SING"]
                noun = LexEntry(sem, num | gen, 0, 0)
                flags |= IS_NOUN
            if base not in propn_cache:
                propn_cache[base] = nf.proper(base)
            pfeats = propn_cache[base]
            if pfeats is not None:
                num = agr_n["PLUR"] if base != form else agr_n["SING"]
                propn = LexEntry(pfeats[0], num | pfeats[1], 0, 0)
                flags |= IS_PROPN
        vbases = [b for b in wn._morphy(form, "v") if b in verbs]
        if vbases:
            flags |= IS_VERB
            subj = obj = 0
            for b in vbases:  # "saw" is see and saw: united
                a, o = vrest.get(b, (0, 0))
                subj, obj = subj | a, obj | o
            verb = LexEntry(0, 0, subj, obj)
        if propn is EMPTY and noun.sem:
            propn = noun  # "the Queen", "Baker Street", "the General": a capitalised common noun
        if flags:
            rows[form] = (noun, verb, propn, flags)
    person, loc = _bits(("HUMAN", "ANIMATE", "CONCRETE")), SEM_BIT["LOCATION"]
    for name, (gen, share) in (names or {}).items():
        # a person's name: HUMAN on top of WordNet's proper reading (Florence the city, in novels a woman);
        # the corpus's gender wins only where WordNet's is open
        noun, verb, propn, flags = rows.get(name, (EMPTY, EMPTY, EMPTY, 0))
        if propn.sem & loc and not propn.sem & SEM_BIT["HUMAN"] and share < PLACE_NAME_SHARE:
            continue  # a place with a few "Mr. Kent"s
        g = (propn.agr & (AGR_BIT["MASC"] | AGR_BIT["FEM"])) or gen
        propn = LexEntry(propn.sem | person, AGR_BIT["SING"] | g, 0, 0)
        rows[name] = (noun if flags & IS_NOUN else propn, verb, propn, flags | IS_PROPN)
    stats = {
        "forms": len(rows),
        "corpus_names": len(names or {}),
        "noun_lemmas": len(nouns),
        "verb_lemmas": len(verbs),
        "noun_forms_with_sem": sum(1 for r in rows.values() if r[0].sem),
        "verb_forms_restricted": sum(1 for r in rows.values() if r[1].subj_req or r[1].obj_req),
        "noun_synsets_with_sem": sum(1 for b in nf._sem.values() if b),
        "build_seconds": round(time.time() - t0, 1),
        "verbnet": vstats,
    }
    return Lexicon(rows), stats


def _count(wn, lemma: str) -> int:
    return sum(lm.count() for lm in wn.lemmas(lemma, "n"))


# ---------------------------------------------------------------------------------------------- coverage
_PTB_NOUN = {"NN", "NNS"}
_PTB_VERB = {"VB", "VBD", "VBG", "VBN", "VBP", "VBZ"}
_AUX_LEMMAS = {"be", "am", "is", "are", "was", "were", "been", "being", "have", "has", "had", "having",
               "do", "does", "did", "'s", "'re", "'ve", "'d", "'m"}
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": " -- "})


def coverage(lex: Lexicon, paragraphs: list[str], max_tokens: int) -> dict:
    """Share of noun / verb / proper-noun / pronoun tokens the lexicon knows, on prose tagged by NLTK's
    averaged perceptron tagger on Treebank tokens (Penn tags; be/have/do left out of verbs as auxiliaries,
    tokens with no letter left out everywhere)."""
    import nltk
    from nltk.tokenize import word_tokenize

    c = Counter()
    n_tok = 0
    noun_id, verb_id, propn_id, pron_id = UPOS_ID["NOUN"], UPOS_ID["VERB"], UPOS_ID["PROPN"], UPOS_ID["PRON"]
    for p in paragraphs:
        toks = word_tokenize(p.translate(_QUOTES))
        if not toks:
            continue
        for w, tag in nltk.pos_tag(toks):
            if not any(ch.isalpha() for ch in w):
                continue
            if tag in _PTB_NOUN:
                e = lex.lookup(w, noun_id)
                c["noun"] += 1
                c["noun_found"] += lex.is_noun(w) or bool(e)
                c["noun_sem"] += bool(e.sem)
            elif tag in _PTB_VERB and w.lower() not in _AUX_LEMMAS:
                e = lex.lookup(w, verb_id)
                c["verb"] += 1
                c["verb_found"] += lex.is_verb(w) or bool(e)
                c["verb_restricted"] += bool(e.subj_req or e.obj_req)
            elif tag in ("NNP", "NNPS"):
                c["propn"] += 1
                c["propn_sem"] += bool(lex.lookup(w, propn_id).sem)
            elif tag in ("PRP", "PRP$"):
                c["pron"] += 1
                c["pron_found"] += bool(lex.lookup(w, pron_id))
        n_tok += len(toks)
        if n_tok >= max_tokens:
            break
    share = lambda a, b: round(c[a] / max(c[b], 1), 4)
    return {
        "tokens": n_tok, "noun_tokens": c["noun"], "verb_tokens": c["verb"], "propn_tokens": c["propn"],
        "noun_found": share("noun_found", "noun"), "noun_with_sem": share("noun_sem", "noun"),
        "verb_found": share("verb_found", "verb"), "verb_restricted": share("verb_restricted", "verb"),
        "propn_with_sem": share("propn_sem", "propn"), "pron_found": share("pron_found", "pron"),
    }


# ---------------------------------------------------------------------------------------------- CLI
EXAMPLES = [("dog", "NOUN"), ("dogs", "NOUN"), ("idea", "NOUN"), ("teacher", "NOUN"), ("women", "NOUN"),
            ("king", "NOUN"), ("city", "NOUN"), ("Paris", "PROPN"), ("John", "PROPN"), ("himself", "PRON"),
            ("Agnes", "PROPN"), ("Dombey", "PROPN"), ("bread", "NOUN"), ("morning", "NOUN"), ("ate", "VERB"),
            ("said", "VERB"), ("broke", "VERB")]


def describe(e: LexEntry) -> str:
    parts = []
    if e.sem:
        parts.append("sem=" + "|".join(sem_names(e.sem)))
    if e.agr:
        parts.append("agr=" + "|".join(agr_names(e.agr)))
    if e.subj_req:
        parts.append("subj=" + "|".join(sem_names(e.subj_req)))
    if e.obj_req:
        parts.append("obj=" + "|".join(sem_names(e.obj_req)))
    return " ".join(parts) or "(empty)"


@click.command()
@click.option("--nltk-data", type=click.Path(file_okay=False), default=None,
              help="NLTK data folder searched first (then $NLTK_DATA, ../shared/data/nltk_data, NLTK's own)")
@click.option("--out", type=click.Path(dir_okay=False), default=str(ARTIFACT), show_default=True)
@click.option("--prose", type=click.Path(file_okay=False), default=str(SHARED_PROSE), show_default=True,
              help="english_prose folder (*/*.jsonl.xz) for frequent forms and coverage; skipped if absent")
@click.option("--prose-top", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="add this many most frequent prose word forms (mapped through morphy)")
@click.option("--coverage-tokens", type=click.IntRange(min=0), default=200_000, show_default=True,
              help="prose tokens POS-tagged to measure coverage (0 = skip)")
@click.option("--names/--no-names", "person_names_on", default=True, show_default=True,
              help="add the person names the prose attests (Mrs. X, said X) as HUMAN proper names")
def main(nltk_data, out, prose, prose_top, coverage_tokens, person_names_on):
    """Build the ASA lexicon table from WordNet + VerbNet."""
    if nltk_data and not Path(nltk_data).is_dir():
        raise click.ClickException(f"--nltk-data {nltk_data}: no such folder")
    t0 = time.time()
    setup_nltk_data(nltk_data)
    wn = load_wordnet()
    vn, vn_name = load_verbnet()
    wn_dir = str(wn.root)
    click.echo(f"WordNet {wn.get_version()} from {wn_dir}; VerbNet {vn_name} from {vn.root}")
    files = prose_files(Path(prose))
    top: list[str] = []
    sample: list[str] = []
    names: dict[str, int] = {}
    if files and (prose_top or coverage_tokens):
        click.echo(f"counting word forms in {len(files)} prose files ...")
        counts, sample, names = prose_counts(files, log=click.echo)
        top = [w for w, _ in counts.most_common(prose_top)]
        if not person_names_on:
            names = {}
    lex, stats = build(wn, vn, extra_forms=top, names=names, log=click.echo)
    meta = {
        "wordnet": f"WordNet {wn.get_version()} (NLTK corpora/wordnet)",
        "verbnet": f"{vn_name} (NLTK corpora/{vn_name})",
        "prose_top_forms": len(top),
        "sense_share": SENSE_SHARE,
        "semantic": list(SEMANTIC),
        "stats": stats,
    }
    lex.save(out, meta)
    size = Path(out).stat().st_size
    t1 = time.time()
    lex2 = Lexicon.load(out)
    load_s = time.time() - t1
    click.echo(f"entries: {len(lex2):,} surface forms; artifact {out}: {size / 1e6:.2f} MB; "
               f"load {load_s:.3f}s")
    click.echo("stats: " + json.dumps({k: v for k, v in stats.items() if k != "verbnet"}))
    if sample and coverage_tokens:
        cov = coverage(lex2, sample, coverage_tokens)
        click.echo("coverage (prose sample, NLTK perceptron tags): " + json.dumps(cov))
    for w, pos in EXAMPLES:
        click.echo(f"  {w:10s} {pos:5s} {describe(lex2.lookup(w, UPOS_ID[pos]))}")
    click.echo(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
