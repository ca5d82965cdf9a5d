"""AttentionPlan construction: bonding rules + selection policy over the causal analyzer.

    planner = Planner(PlanConfig(mode="full", k=64))
    keys = planner.plan(pieces)          # int32 (N, K) token positions; None in mode "none" (dense)
    inc = planner.incremental()          # decode: one row per new token, equal to the batch build
    row = inc.extend(piece)              # int32 (K,)

Cost: each row inspects at most `lookback_words` earlier words of its sentence, a bounded antecedent
memory and O(K) policy terms, so building N rows is O(N * (L + K)) time and O(N * K) memory; nothing
N x N is ever allocated. A word's tokens enter as bonded keys or antecedents only through its last
`word_cap` = 2K + window + sinks tokens: no row can select an older one (see _word_cap), so a word of any
length costs O(K) per row, and the plans are the same as without the cap for every input. The batch
build is the incremental build run over the pieces, so plan(x[:i+1]) == plan(x)[:i+1] holds by construction, at token granularity.

Selection policy (each term switchable in PlanConfig), in priority order until K keys are taken:
  1. the token itself and the earlier tokens of its own word (subword pieces of one word);
  2. sink tokens: the first `sinks` positions of the sequence;
  3. the local window: the `window` tokens before it;
  4. bonded words of its sentence, most recent first (all their tokens), within `lookback_words` words;
  5. for pronouns (`cross_sentence`): agreeing nominal antecedents from earlier sentences, most recent first;
  6. lexical cohesion (`cohesion` > 0): for a noun or proper noun, the tokens of the `cohesion` most recent
     earlier mentions of its lemma anywhere in the document, most recent first (see _cohesion_tokens);
  7. strided global keys: every `stride`-th position before the window, most recent first.
The kept keys are then sorted ascending and padded with -1.

Mode "local" is the locality control: terms 1-3 (and 6 / 7 when `cohesion` / `stride` is set) only, no bonds
and no antecedents, so a model trained on it shows what self + word + sinks + window alone are worth at the same K.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict, deque
from itertools import islice

import numpy as np

from ..config import PlanConfig
from .analyzer import Analyzer, AnalyzerState
from .features import AGR_BIT
from .rules import NOMINAL_MASK, NOUN, POS_COMPAT, PRON, PROPN, VERB, agreement_conflict, feature_block
from .segment import SPACE, Segmenter

ANTECEDENT_MEMORY = 32           # nominal words remembered for cross-sentence pronoun antecedents
_PERSONS = AGR_BIT["PERS1"] | AGR_BIT["PERS2"] | AGR_BIT["PERS3"]
_BCACHE_MAX = 256                # query keys cached per sentence before the cache is reset
_NO_TOKENS: list[int] = []
# lexical cohesion (PlanConfig.cohesion): which words take part, and the bounds of the mention memory
COHESION_MASK = (1 << NOUN) | (1 << PROPN)   # content words whose repetition carries the referent
COHESION_LEMMAS = 4096           # distinct lemmas remembered (least recently mentioned dropped first)
COHESION_PER_PREFIX = 8          # lemmas listed per 3-letter prefix (a query looks at these only)
COHESION_MIN_CHARS = 3           # shorter words (and prefixes) neither become mentions nor query


def cohesion_lemma(text: str) -> str:
    """A cheap English lemma of a lower-cased word: strip the plural inflection (the analyzer splits off
    clitics such as 's already). Deterministic and causal: a function of the text alone."""
    n = len(text)
    if n > 4 and text.endswith("ies"):
        return text[:-3] + "y"
    if n > 4 and text.endswith(("sses", "shes", "ches", "xes")):
        return text[:-2]
    if n > 3 and text.endswith("s") and not text.endswith(("ss", "us", "is")):
        return text[:-1]
    return text


def _word_cap(cfg: PlanConfig) -> int:
    """How many of a word's last tokens can ever be chosen as bonded keys or antecedents. Both terms take a
    word's tokens most recent first. Fast path: at most `window` of them lie at or after the row's `lo`, none
    before the sinks unless all older ones do too, so the last K + window hold the row's budget (<= K).
    Priority path: at most K - 1 of them were taken already, so the last 2K fill the row. The cap is
    2K + window + sinks: no row differs from the uncapped rule, for any input."""
    return 2 * cfg.k + cfg.window + cfg.sinks


class Planner:
    def __init__(self, cfg: PlanConfig, analyzer: Analyzer | None = None):
        self.cfg = cfg
        self._analyzer = analyzer

    @property
    def analyzer(self) -> Analyzer:
        if self._analyzer is None:
            self._analyzer = Analyzer.default()
        return self._analyzer

    def plan(self, pieces) -> np.ndarray | None:
        """Batch build for a whole sequence: int32 (N, K), or None for the dense baseline."""
        if self.cfg.dense:
            return None
        return self.incremental().extend_many(pieces)

    def incremental(self) -> "IncrementalPlan":
        return IncrementalPlan(self)

    def incremental_from_state(self, state: dict) -> "IncrementalPlan":
        inc = IncrementalPlan(self)
        inc.load_state(state)
        return inc


class IncrementalPlan:
    """Causal plan state: `extend(piece)` appends the row of one new token in time independent of N."""

    fast_path = True                  # tests switch it off to check it against the priority-order path

    def __init__(self, planner: Planner):
        self.cfg = cfg = planner.cfg
        self.st: AnalyzerState = planner.analyzer.start()
        mode = "full" if cfg.mode in ("random", "random_bonds") else cfg.mode
        self._control = cfg.mode if cfg.mode != mode else None   # the random controls rewrite rows
        self._local = cfg.mode == "local"                         # no linguistic terms (bonds, antecedents)
        self._use_pos = mode in ("full", "pos_only")
        self._use_feat = mode in ("full", "features_only")
        self._antecedents: deque[int] = deque(maxlen=ANTECEDENT_MEMORY)
        self._done_word = -1          # last word index known to be complete
        self._bcache: dict = {}       # _bonded: query key -> [next word to scan, bonded tokens ascending]
        self._bcache_sent = -1        # ... for the sentence starting at this word
        self._cap = _word_cap(cfg)
        self._coh: OrderedDict[str, deque[int]] = OrderedDict()      # lemma -> its last `cohesion` mentions
        self._coh_prefix: OrderedDict[str, list[str]] = OrderedDict()  # 3-letter prefix -> recent lemmas

    def __len__(self) -> int:
        return len(self.st)

    # ------------------------------------------------------------------------------------------
    def extend(self, piece: str) -> np.ndarray | None:
        if self.cfg.dense:
            self.st.push(piece)
            return None
        row = np.full(self.cfg.k, -1, dtype=np.int32)
        keys = self._row(piece)
        row[: len(keys)] = keys
        return row

    def extend_many(self, pieces) -> np.ndarray | None:
        pieces = list(pieces)
        if self.cfg.dense:
            for p in pieces:
                self.st.push(p)
            return None
        # Per block of rows: a fast-path row is sinks [0, ns) + its chosen keys + the run [lo, i], so only the
        # chosen keys are collected in Python (flat) and numpy lays out the two ranges; other rows are written
        # whole. One numpy assignment per row would cost more than building the row.
        n, K = len(pieces), self.cfg.k
        out = np.empty((n, K), dtype=np.int32)
        cols = np.arange(K)[None, :]
        parts = self._row_parts
        for s in range(0, n, 1024):
            m = min(1024, n - s)
            flat: list[int] = []
            nss, lens, los, ii, whole = [], [], [], [], []
            for t, p in enumerate(pieces[s:s + m]):
                ns, extra, lo, i = parts(p)
                if ns < 0:                                    # a whole row: lay out nothing, write it below
                    whole.append((t, extra))
                    ns, extra, lo = 0, (), i + 1
                flat += extra
                nss.append(ns)
                lens.append(len(extra))
                los.append(lo)
                ii.append(i)
            ns_a = np.array(nss)[:, None]
            base = ns_a + np.array(lens)[:, None]                # (m, 1) first column of the run
            lo_a = np.array(los)[:, None]
            end = base + np.array(ii)[:, None] + 1 - lo_a        # (m, 1) one past the run
            blk = np.where(cols < ns_a, cols, np.where((cols >= base) & (cols < end), lo_a + cols - base, -1))
            blk[(cols >= ns_a) & (cols < base)] = flat
            for t, row in whole:
                blk[t, len(row):] = -1
                blk[t, :len(row)] = row
            out[s:s + m] = blk
        return out

    # ------------------------------------------------------------------------------------------
    def _row(self, piece: str) -> list[int]:
        ns, extra, lo, i = self._row_parts(piece)
        if ns < 0:
            return extra
        out = list(range(ns))
        out += extra
        out += range(lo, i + 1)
        return out

    def _row_parts(self, piece: str) -> tuple[int, list[int], int, int]:
        """Consume one piece; its row as (ns, extra, lo, i): sinks [0, ns), then `extra` (ascending), then
        [lo, i]. Rows of another shape come as (-1, row, 0, i)."""
        st, cfg = self.st, self.cfg
        w = st.push(piece)
        i = len(st.tok_word) - 1
        # words before w are complete now: remember nominal ones as possible antecedents
        for j in range(self._done_word + 1, w):
            if NOMINAL_MASK >> st.w_upos[j] & 1:
                self._antecedents.append(j)
            if cfg.cohesion:
                self._add_mention(j)
        self._done_word = w - 1

        K = cfg.k
        ws = st.w_start[w]
        lo = min(ws, max(0, i - cfg.window)) if cfg.window else ws   # self + own word + window: [lo, i]
        ns = min(cfg.sinks, lo)                                      # sinks: [0, ns), disjoint from [lo, i]
        if self.fast_path and (i + 1 - lo) + ns < K:
            # Fast path: the contiguous terms fit. The bonded tokens come ascending and all lie after the
            # antecedents (those are in earlier sentences), so the most recent `budget` of them in [ns, lo)
            # are one slice found by bisection, and no set is needed.
            budget = K - (i + 1 - lo) - ns
            if self._local:
                extra = []
            else:
                toks, s0 = self._bonded(w)
                b = bisect_left(toks, lo, s0)
                extra = toks[max(bisect_left(toks, ns, s0, b), b - budget):b]
            if cfg.cross_sentence and not self._local and len(extra) < budget and self._is_pronoun(w):
                ant = [p for p in self._antecedent_tokens(w) if ns <= p < lo][: budget - len(extra)]
                extra = ant[::-1] + extra
            if cfg.cohesion and len(extra) < budget:
                coh = self._cohesion_tokens(w)
                if coh:
                    have = set(extra)
                    extra += islice((p for p in coh if ns <= p < lo and p not in have), budget - len(extra))
                    extra.sort()
            if cfg.stride and len(extra) < budget:
                have = set(extra)
                more = (p for p in self._strided(i) if ns <= p < lo and p not in have)
                extra += islice(more, budget - len(extra))        # lazy: O(K), not O(i / stride)
                extra.sort()
            if self._control is None:
                return ns, extra, lo, i
            out = list(range(ns))
            out += extra
            out += range(lo, i + 1)
        else:
            out = self._row_in_priority_order(w, i, ws)
        if self._control == "random":
            out = self._random_row(i, len(out))
            out.sort()
        elif self._control == "random_bonds":
            out = self._random_bonds_row(i, out, ns, lo)
        return -1, out, 0, i

    def _row_in_priority_order(self, w: int, i: int, ws: int) -> list[int]:
        """General path (the contiguous terms alone reach K): take terms strictly in priority order."""
        cfg, K = self.cfg, self.cfg.k
        out, seen = [i], {i}

        def take(positions):
            if len(out) >= K:
                return True
            for p in positions:
                if p not in seen:
                    seen.add(p)
                    out.append(p)
                    if len(out) == K:
                        return True
            return False

        if (take(range(i - 1, ws - 1, -1))
                or (cfg.sinks and take(range(min(cfg.sinks, i))))
                or (cfg.window and take(range(i - 1, max(-1, i - 1 - cfg.window), -1)))
                or (not self._local and take(self._bonded_recent_first(w)))
                or (cfg.cross_sentence and not self._local and take(self._antecedent_tokens(w)))
                or (cfg.cohesion and take(self._cohesion_tokens(w)))
                or (cfg.stride and take(self._strided(i)))):
            pass
        out.sort()
        return out

    def _bonded(self, w: int) -> tuple[list[int], int]:
        """Tokens of the earlier words of w's sentence that w bonds with, ascending, and the index of the first
        one inside the lookback (`lookback_words` words). Of each bonded word only its last `self._cap`
        (_word_cap) tokens are listed: no row can select an older one, so a word longer than the cap is cut
        here on purpose (tests/test_linearity.py checks the rows against an uncapped build).

        Incremental: whether w bonds with an earlier word j depends only on w's own analysis (its UPOS, and its
        features and clause where a feature rule can apply) and on j, which is complete and final. So lists are
        cached per such query key within the sentence, and each call only scans the words added since that key
        was last asked: O(new words) per word instead of O(sentence)."""
        st = self.st
        if st.w_kind[w] == SPACE:
            return _NO_TOKENS, 0
        uq = st.w_upos[w]
        sq, aq, rq, oq = st.w_sem[w], st.w_agr[w], st.w_subj[w], st.w_obj[w]
        use_pos, use_feat = self._use_pos, self._use_feat
        # Only three kinds of pair can be blocked by features (rules.feature_block): verb -> nominal (subject
        # selection), nominal -> verb with an object restriction, pronoun -> nominal (agreement, binding).
        want_nom = want_verb = False
        if use_feat and (sq | aq | rq | oq):
            if use_pos:
                want_nom = (uq == VERB and rq) or uq == PRON
                want_verb = bool(NOMINAL_MASK >> uq & 1 and sq)
            else:
                want_nom = want_verb = True                # features_only: roles come from the features
        filt = want_nom or want_verb
        cl, qtext = st.w_clause[w], st.w_text[w]
        # the key holds exactly what the filter below reads about the query
        if not filt:
            key = uq
        elif use_pos and uq == VERB:
            key = (uq, rq, cl)
        elif use_pos and uq != PRON:
            key = (uq, sq, cl)
        else:
            key = (uq, sq, aq, rq, oq, cl, qtext)
        first = st.w_sent_first[w]
        lo = max(first, w - self.cfg.lookback_words)
        cache = self._bcache
        if first != self._bcache_sent or len(cache) > _BCACHE_MAX:
            cache.clear()
            self._bcache_sent = first
        ent = cache.get(key)
        if ent is None:
            ent = cache[key] = [lo, []]
        j0, toks = ent
        w_start = st.w_start
        if j0 < w:
            span = range(max(j0, lo), w)
            w_upos, w_kind = st.w_upos, st.w_kind
            if use_pos:                                   # X (whitespace) is compatible with nothing
                cq = POS_COMPAT[uq]
                cands = [j for j in span if cq >> w_upos[j] & 1]
            else:
                cands = [j for j in span if w_kind[j] != SPACE]
            if filt:
                w_sem, w_agr, w_subj, w_obj, w_clause = st.w_sem, st.w_agr, st.w_subj, st.w_obj, st.w_clause
                if use_pos and uq == VERB:
                    # rules.feature_block, verb -> nominal: subject selection inside the clause
                    cands = [j for j in cands
                             if not (NOMINAL_MASK >> w_upos[j] & 1 and w_clause[j] == cl and w_sem[j]
                                     and not w_sem[j] & rq)]
                elif use_pos and uq != PRON:
                    # rules.feature_block, nominal -> verb: the verb's object restriction inside the clause
                    cands = [j for j in cands
                             if not (w_upos[j] == VERB and w_obj[j] and w_clause[j] == cl and not sq & w_obj[j])]
                elif use_pos:                             # pronouns: agreement and binding, the full rule
                    cands = [j for j in cands
                             if not (((want_nom and NOMINAL_MASK >> w_upos[j] & 1) or
                                      (want_verb and w_upos[j] == VERB and w_obj[j]))
                                     and feature_block(uq, sq, aq, rq, oq, qtext, w_upos[j], w_sem[j], w_agr[j],
                                                       w_subj[j], w_obj[j], w_clause[j] == cl, True))]
                else:
                    cands = [j for j in cands
                             if not ((w_sem[j] | w_agr[j] | w_subj[j] | w_obj[j])
                                     and feature_block(uq, sq, aq, rq, oq, qtext, w_upos[j], w_sem[j], w_agr[j],
                                                       w_subj[j], w_obj[j], w_clause[j] == cl, False))]
            cap = self._cap
            for j in cands:
                a, e = w_start[j], w_start[j + 1]
                if e - a == 1:
                    toks.append(a)
                else:
                    toks.extend(range(max(a, e - cap), e))
            ent[0] = w
        s0 = bisect_left(toks, w_start[lo]) if lo > first else 0
        if s0 > 64 and 2 * s0 > len(toks):              # drop what fell out of the lookback, amortised O(1)
            del toks[:s0]
            s0 = 0
        return toks, s0

    def _bonded_recent_first(self, w: int):
        toks, s0 = self._bonded(w)
        return reversed(toks[s0:])

    def _is_pronoun(self, w: int) -> bool:
        st = self.st
        return st.w_upos[w] == PRON if self._use_pos else bool(st.w_agr[w] & _PERSONS)

    def _antecedent_tokens(self, w: int):
        """Pronoun query: agreeing nominal antecedents in earlier sentences, most recent first."""
        st = self.st
        uq, aq = st.w_upos[w], st.w_agr[w]
        if not self._is_pronoun(w) or aq & AGR_BIT["REFLEXIVE"]:
            return ()
        sent, sq = st.w_sent[w], st.w_sem[w]
        w_sent, w_sem, w_agr, w_start = st.w_sent, st.w_sem, st.w_agr, st.w_start
        use_feat, use_pos = self._use_feat, self._use_pos
        toks = []
        for j in reversed(self._antecedents):
            if w_sent[j] == sent:
                continue                     # same sentence: the bonded scan decides
            if use_feat:
                # across sentences only agreement can block a pronoun -> nominal pair (binding needs one
                # clause); features_only reads roles from the features, so it asks the full rule
                if use_pos:
                    if agreement_conflict(aq, sq, w_agr[j], w_sem[j]):
                        continue
                elif feature_block(uq, sq, aq, 0, 0, st.w_text[w], st.w_upos[j], w_sem[j], w_agr[j],
                                   0, 0, False, False):
                    continue
            e = w_start[j + 1]
            toks.extend(range(e - 1, max(w_start[j], e - self._cap) - 1, -1))
        return toks

    def _add_mention(self, j: int) -> None:
        """Word j is complete: if it is a noun or proper noun, remember it as the latest mention of its lemma.
        Memory is bounded whatever the document: `cohesion` mentions per lemma, COHESION_LEMMAS lemmas (the least
        recently mentioned is forgotten first), COHESION_PER_PREFIX lemmas per prefix list."""
        st = self.st
        if not COHESION_MASK >> st.w_upos[j] & 1:
            return
        text = st.w_text[j]
        if len(text) < COHESION_MIN_CHARS or not text[0].isalpha():
            return
        lem = cohesion_lemma(text)
        coh = self._coh
        dq = coh.get(lem)
        if dq is None:
            dq = coh[lem] = deque(maxlen=self.cfg.cohesion)
            if len(coh) > COHESION_LEMMAS:
                coh.popitem(last=False)
        else:
            coh.move_to_end(lem)
        dq.append(j)
        pre = self._coh_prefix
        key = lem[:COHESION_MIN_CHARS]
        lst = pre.get(key)
        if lst is None:
            lst = pre[key] = []
            if len(pre) > COHESION_LEMMAS:
                pre.popitem(last=False)
        else:
            pre.move_to_end(key)
            if lem in lst:
                lst.remove(lem)
        lst.append(lem)
        if len(lst) > COHESION_PER_PREFIX:
            del lst[0]

    def _cohesion_tokens(self, w: int) -> list[int]:
        """Lexical-cohesion query: if word w (as known at this token: its text and tag so far) is a noun or
        proper noun, the tokens of the remembered mentions of every lemma it may be, most recent first. A lemma
        matches when it equals the lemma of w's text so far or starts with that text: from a word's first piece
        on ("Casa" of "Casaubon") its row holds the earlier mentions it may be continuing, so the model can copy
        the rest. Only complete earlier words are mentions, so the row depends on tokens <= i alone (causal).
        Work: at most COHESION_PER_PREFIX lemmas x `cohesion` mentions x their last _word_cap tokens."""
        st = self.st
        if not COHESION_MASK >> st.w_upos[w] & 1:
            return _NO_TOKENS
        text = st.w_text[w]
        if len(text) < COHESION_MIN_CHARS:
            return _NO_TOKENS
        lst = self._coh_prefix.get(text[:COHESION_MIN_CHARS])
        if not lst:
            return _NO_TOKENS
        lem, coh = cohesion_lemma(text), self._coh
        mentions = [j for m in lst if m in coh and (m == lem or m.startswith(text)) for j in coh[m]]
        if not mentions:
            return _NO_TOKENS
        mentions.sort(reverse=True)
        w_start, cap, toks = st.w_start, self._cap, []
        for j in mentions:
            e = w_start[j + 1]
            toks.extend(range(e - 1, max(w_start[j], e - cap) - 1, -1))
        return toks

    def _strided(self, i: int):
        s = self.cfg.stride
        top = i - 1 - self.cfg.window            # strided keys lie before the window
        first = top - (top + 1) % s              # largest p <= top with (p + 1) % s == 0
        return range(first, -1, -s)

    def _random_row(self, i: int, count: int) -> list[int]:
        """Control: the same number of keys, drawn uniformly from the earlier positions (seeded per row)."""
        if count <= 1 or i == 0:
            return [i]
        need = min(count - 1, i)
        rng = np.random.default_rng((self.cfg.seed, i))
        if need == i:
            return list(range(i + 1))
        picked: dict[int, None] = {}
        while len(picked) < need:
            for p in rng.integers(0, i, size=2 * need).tolist():
                picked.setdefault(p)
                if len(picked) == need:
                    break
        return list(picked) + [i]

    def _random_bonds_row(self, i: int, row: list[int], ns: int, lo: int) -> list[int]:
        """Control: keep the row's self / word / sink / window keys ([0, ns) and [lo, i]); replace the keys
        the rules chose (bonds, antecedents, strided) by as many uniform draws from [ns, lo), seeded per row.
        It separates "linguistic" from "local": same row lengths, same local part, random long-range part."""
        kept = [p for p in row if p < ns or p >= lo]
        need = len(row) - len(kept)
        span = lo - ns
        if need <= 0 or span <= 0:
            return row
        if need >= span:
            drawn = list(range(ns, lo))
        else:
            rng = np.random.default_rng((self.cfg.seed, i, 1))
            picked: dict[int, None] = {}
            while len(picked) < need:
                for p in rng.integers(ns, lo, size=2 * need).tolist():
                    picked.setdefault(p)
                    if len(picked) == need:
                        break
            drawn = list(picked)
        return sorted(kept + drawn)

    # ------------------------------------------------------------------------------------------
    def reachable(self) -> np.ndarray:
        """Sorted positions that any FUTURE row may still select (for KV-cache eviction). Everything else
        can be dropped from the cache without changing any later row."""
        st, cfg = self.st, self.cfg
        n = len(st.tok_word)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if cfg.mode in ("random", "random_bonds"):
            return np.arange(n, dtype=np.int64)          # the controls may pick anything
        keep = set(range(min(cfg.sinks, n)))
        keep.update(range(max(0, n - cfg.window), n))
        w = st.tok_word[-1]
        if cfg.mode == "local":
            keep.update(range(st.w_start[w], n))         # the current word may go on
        else:
            lo = max(st.w_sent_first[w], w - cfg.lookback_words)
            keep.update(range(st.w_start[lo], n))        # words a later query of this sentence may bond
        if cfg.cross_sentence and cfg.mode != "local":
            for j in self._antecedents:
                keep.update(range(st.w_start[j], st.w_start[j + 1]))
            if NOMINAL_MASK >> st.w_upos[w] & 1:
                keep.update(range(st.w_start[w], n))     # the current word may become an antecedent
        if cfg.cohesion:                                 # every remembered mention (the current word is kept above)
            w_start, cap = st.w_start, self._cap
            for dq in self._coh.values():
                for j in dq:
                    e = w_start[j + 1]
                    keep.update(range(max(w_start[j], e - cap), e))
        if cfg.stride:
            keep.update(range(cfg.stride - 1, n, cfg.stride))
        return np.fromiter(sorted(keep), dtype=np.int64)

    # --- prompt cache ---------------------------------------------------------------------------
    _INT_LISTS = ("tok_word", "tok_upos", "w_start", "w_kind", "w_sent", "w_sent_first", "w_clause", "w_upos",
                  "w_sem", "w_agr", "w_subj", "w_obj")

    def state_dict(self) -> dict:
        """{"arrays": {name: np.ndarray}, "meta": json-able dict}: everything extend() needs to go on."""
        st = self.st
        arrays = {name: np.asarray(getattr(st, name), dtype=np.int64) for name in self._INT_LISTS}
        arrays["antecedents"] = np.asarray(list(self._antecedents), dtype=np.int64)
        meta = {"plan": self.cfg.to_dict(), "w_text": st.w_text, "ctx": st._ctx, "ctx_sent": st._ctx_sent,
                "seg": st.seg.state(), "done_word": self._done_word}
        return {"arrays": arrays, "meta": meta}

    def load_state(self, state: dict) -> None:
        arrays, meta = state["arrays"], state["meta"]
        if meta["plan"] != self.cfg.to_dict():
            raise ValueError("plan state was built with a different PlanConfig")
        st = self.st
        for name in self._INT_LISTS:
            setattr(st, name, [int(x) for x in arrays[name]])
        st.w_text = list(meta["w_text"])
        st._ctx = [(a, int(b)) for a, b in meta["ctx"]]
        st._ctx_sent = int(meta["ctx_sent"])
        st.seg = Segmenter.from_state(meta["seg"])
        w = len(st.w_clause) - 1                          # derived, not stored: the format stays as it was
        st._clause_base = 0 if w <= 0 else st.w_clause[w - 1] + (st.w_sent[w - 1] != st.w_sent[w])
        self._antecedents = deque((int(x) for x in arrays["antecedents"]), maxlen=ANTECEDENT_MEMORY)
        self._done_word = int(meta["done_word"])
        self._bcache, self._bcache_sent = {}, -1
        # the cohesion memory is a function of the complete words' final text and tags: replayed, not stored
        # (O(words), string work only), so the state format is the same with and without it
        self._coh, self._coh_prefix = OrderedDict(), OrderedDict()
        if self.cfg.cohesion:
            for j in range(self._done_word + 1):
                self._add_mention(j)
