"""Third-round experiment: a causal (left-to-right) neural UPOS tagger on UD English EWT.

Per word: lowercased word embedding (train freq >= 2, else UNK) + char CNN over the word's own characters +
the shipped tagger artifact's lexicon clusters (fine, coarse, cap bucket) + a capitalisation class. A
unidirectional LSTM reads the words left to right; the tag of word i is read from the hidden state after
word i (and word i's own input), so nothing to the right is ever seen.

    nice python -m training.experiments.tagger_rnn --hidden 256 --epochs 8 --test
Also times a numpy forward of one recurrent step + output layer per word (single thread, warm).
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from asa_runtime.linguistics.features import N_UPOS
from asa_runtime.linguistics.tagger import CausalTagger, normalize
from training.build_tagger import find_split, read_conllu

torch.set_num_threads(1)
MAXC = 20  # characters per word: first 10 + last 10 of longer words


def cap_class(w: str) -> int:
    if any(c.isdigit() for c in w):
        return 3
    letters = [c for c in w if c.isalpha()]
    if not letters:
        return 4
    if all(c.isupper() for c in letters):
        return 2 if len(letters) > 1 else 1
    return 1 if letters[0].isupper() else 0


class Vocab:
    def __init__(self, train, lex):
        cnt = collections.Counter(normalize(w).lower() for ws, _ in train for w in ws)
        self.wid = {w: i + 2 for i, w in enumerate(sorted(w for w, c in cnt.items() if c >= 2))}  # 0 pad, 1 unk
        self.freq = cnt
        ccnt = collections.Counter(c for ws, _ in train for w in ws for c in normalize(w))
        self.cid = {c: i + 3 for i, c in enumerate(sorted(c for c, n in ccnt.items() if n >= 2))}  # 0 pad 1 unk 2 bow/eow
        self.lex = lex
        self.cache = {}

    def word(self, w: str):
        r = self.cache.get(w)
        if r is None:
            n = normalize(w)
            lo = n.lower()
            f, c, k = self.lex.get(lo, ("-1", "-1", "-1"))
            s = n if len(n) <= MAXC else n[:10] + n[-10:]
            chars = [2] + [self.cid.get(ch, 1) for ch in s] + [2]
            chars += [0] * (MAXC + 2 - len(chars))
            r = (self.wid.get(lo, 1), int(f) + 1, int(c) + 1, int(k) + 1, cap_class(n), chars)
            self.cache[w] = r
        return r


class Tagger(nn.Module):
    def __init__(self, nw, nc, hidden, wdim=100, cdim=24, cfilt=64, drop=0.3, layers=1):
        super().__init__()
        self.wemb = nn.Embedding(nw, wdim, padding_idx=0)
        self.cemb = nn.Embedding(nc, cdim, padding_idx=0)
        self.conv = nn.Conv1d(cdim, cfilt, 3, padding=1)
        self.femb = nn.Embedding(1002, 32)
        self.gemb = nn.Embedding(66, 16)
        self.kemb = nn.Embedding(17, 8)
        self.aemb = nn.Embedding(5, 8)
        din = wdim + cfilt + 32 + 16 + 8 + 8
        self.rnn = nn.LSTM(din, hidden, layers, batch_first=True, dropout=drop if layers > 1 else 0.0)
        self.out = nn.Linear(hidden + din, N_UPOS)
        self.drop = nn.Dropout(drop)

    def embed(self, W, C):  # W (B, T, 5) ints, C (B, T, MAXC+2)
        B, T, L = C.shape
        ce = self.cemb(C.view(B * T, L)).transpose(1, 2)  # (BT, cdim, L)
        ch = torch.relu(self.conv(ce)).max(dim=2).values.view(B, T, -1)
        return torch.cat([self.wemb(W[..., 0]), ch, self.femb(W[..., 1]), self.gemb(W[..., 2]),
                          self.kemb(W[..., 3]), self.aemb(W[..., 4])], -1)  # (B, T, din)

    def forward(self, W, C, lens):
        x = self.drop(self.embed(W, C))
        pk = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        h, _ = self.rnn(pk)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
        return self.out(self.drop(torch.cat([h, x], -1)))  # (B, T, N_UPOS)


def batchify(sents, voc, word_drop=0.0, rng=None):
    T = max(len(ws) for ws, _ in sents)
    B = len(sents)
    W = torch.zeros(B, T, 5, dtype=torch.long)
    C = torch.zeros(B, T, MAXC + 2, dtype=torch.long)
    Y = torch.full((B, T), -100, dtype=torch.long)
    for b, (ws, ts) in enumerate(sents):
        for i, w in enumerate(ws):
            wid, f, c, k, a, ch = voc.word(w)
            if word_drop and wid > 1 and rng.random() < word_drop / (word_drop + voc.freq.get(normalize(w).lower(), 0)):
                wid = 1
            W[b, i] = torch.tensor((wid, f, c, k, a))
            C[b, i] = torch.tensor(ch)
        Y[b, :len(ts)] = torch.tensor(ts)
    return W, C, Y, [len(ws) for ws, _ in sents]


def evaluate(model, sents, voc, bs=64):
    model.eval()
    right = total = 0
    with torch.no_grad():
        for i in range(0, len(sents), bs):
            W, C, Y, lens = batchify(sents[i:i + bs], voc)
            p = model(W, C, lens).argmax(-1)
            m = Y != -100
            right += (p[m] == Y[m]).sum().item()
            total += m.sum().item()
    model.train()
    return right / total


def causality_check(model, sents, voc):
    """Prefix property: tags of a sentence prefix equal the first tags of the whole sentence."""
    model.eval()
    with torch.no_grad():
        for ws, ts in sents[:50]:
            W, C, _, lens = batchify([(ws, ts)], voc)
            full = model(W, C, lens).argmax(-1)[0]
            k = max(1, len(ws) // 2)
            W2, C2, _, l2 = batchify([(ws[:k], ts[:k])], voc)
            assert torch.equal(model(W2, C2, l2).argmax(-1)[0], full[:k])
    model.train()


def numpy_cost(model, words, voc):
    """Warm per-word cost of a numpy forward: cached per-word-type input projection + one LSTM step + output."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    H = sd["rnn.weight_hh_l0"].shape[1]
    Whh = np.ascontiguousarray(sd["rnn.weight_hh_l0"])  # (4H, H)
    nl = model.rnn.num_layers
    up = [(np.ascontiguousarray(sd[f"rnn.weight_ih_l{l}"]), np.ascontiguousarray(sd[f"rnn.weight_hh_l{l}"]),
           sd[f"rnn.bias_ih_l{l}"] + sd[f"rnn.bias_hh_l{l}"]) for l in range(1, nl)]
    Wo_h = np.ascontiguousarray(sd["out.weight"][:, :H])  # (17, H)
    model.eval()
    cache = {}  # word string -> (W_ih x + b_ih + b_hh, Wo_x x + b_o): depends on the word alone
    with torch.no_grad():
        for w in set(words):
            W, C, _, _ = batchify([([w], [0])], voc)
            x = model.embed(W, C)[0, 0].numpy()
            cache[w] = (sd["rnn.weight_ih_l0"] @ x + sd["rnn.bias_ih_l0"] + sd["rnn.bias_hh_l0"],
                        sd["out.weight"][:, H:] @ x + sd["out.bias"])
    def cell(g, c):
        i, f, gg, o = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:]
        c = c / (1 + np.exp(-f)) + np.tanh(gg) / (1 + np.exp(-i))
        return np.tanh(c) / (1 + np.exp(-o)), c
    def run(ws):
        hs = [np.zeros(H, np.float32) for _ in range(nl)]; cs = [np.zeros(H, np.float32) for _ in range(nl)]
        out = []
        for w in ws:
            gx, ox = cache[w]
            hs[0], cs[0] = cell(gx + Whh @ hs[0], cs[0])
            for l, (Wi, Wh, b) in enumerate(up, 1):
                hs[l], cs[l] = cell(Wi @ hs[l - 1] + Wh @ hs[l] + b, cs[l])
            out.append(int(np.argmax(Wo_h @ hs[-1] + ox)))
        return out
    run(words[:2000])
    best = 1e9
    for _ in range(3):
        t = time.perf_counter(); run(words); best = min(best, (time.perf_counter() - t) / len(words))
    # Cache miss (a word type not seen before): numpy char CNN (im2col matmul) + input projections.
    Ce, Cw, Cb = sd["cemb.weight"], sd["conv.weight"], sd["conv.bias"]  # Cw (F, cdim, 3)
    Cw2 = np.ascontiguousarray(Cw.transpose(2, 1, 0).reshape(-1, Cw.shape[0]))  # (3*cdim, F)
    Wih, Wox = sd["rnn.weight_ih_l0"], np.ascontiguousarray(sd["out.weight"][:, H:])
    tabs = [sd[k] for k in ("wemb.weight", "femb.weight", "gemb.weight", "kemb.weight", "aemb.weight")]
    def miss(w):
        wid, f, c, k, a, ch = voc.word(w)
        e = Ce[np.array(ch)]  # (L, cdim)
        e = np.concatenate([np.zeros((1, e.shape[1]), np.float32), e, np.zeros((1, e.shape[1]), np.float32)])
        win = np.concatenate([e[:-2], e[1:-1], e[2:]], 1)  # (L, 3*cdim)
        chv = np.maximum(win @ Cw2 + Cb, 0).max(0)
        x = np.concatenate([tabs[0][wid], chv, tabs[1][f], tabs[2][c], tabs[3][k], tabs[4][a]])
        return Wih @ x, Wox @ x
    sample = list(set(words))[:3000]
    for w in sample[:200]:
        miss(w)
    t = time.perf_counter()
    for w in sample:
        voc.cache.pop(w, None); miss(w)
    miss_us = (time.perf_counter() - t) / len(sample) * 1e6
    return best * 1e6, H, miss_us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ewt", default="../shared/data/ud_english_ewt")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--drop", type=float, default=0.3)
    ap.add_argument("--word-drop", type=float, default=0.25)
    ap.add_argument("--max-minutes", type=float, default=1e9)
    ap.add_argument("--test", action="store_true", help="report test once, for the best-dev epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="save the best-dev state dict here")
    ap.add_argument("--load", help="skip training: load this state dict (same --hidden)")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    from pathlib import Path
    ewt = Path(a.ewt)
    train, dev = read_conllu(find_split(ewt, "train")), read_conllu(find_split(ewt, "dev"))
    voc = Vocab(train, CausalTagger.load().lex)
    model = Tagger(len(voc.wid) + 2, len(voc.cid) + 3, a.hidden, drop=a.drop, layers=a.layers)
    nparam = sum(p.numel() for p in model.parameters())
    print(f"train {len(train)} sents, vocab {len(voc.wid)}, chars {len(voc.cid)}, params {nparam}", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.7 ** max(0, e - 3))
    best, best_state, t0 = -1, None, time.time()
    if a.load:
        model.load_state_dict(torch.load(a.load))
        best, best_state, a.epochs = evaluate(model, dev, voc), model.state_dict(), 0
    for ep in range(a.epochs):
        order = sorted(train, key=lambda s: len(s[0]) + rng.random() * 4)  # length buckets
        batches = [order[i:i + a.bs] for i in range(0, len(order), a.bs)]
        rng.shuffle(batches)
        tl = 0.0
        for bt in batches:
            W, C, Y, lens = batchify(bt, voc, a.word_drop, rng)
            loss = F.cross_entropy(model(W, C, lens).reshape(-1, N_UPOS), Y.reshape(-1), ignore_index=-100)
            opt.zero_grad(); loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step(); tl += loss.item()
        sched.step()
        acc = evaluate(model, dev, voc)
        print(f"epoch {ep + 1} loss {tl / len(batches):.4f} dev {acc * 100:.2f} ({time.time() - t0:.0f}s)", flush=True)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
        if (time.time() - t0) / 60 > a.max_minutes:
            break
    model.load_state_dict(best_state)
    if a.save:
        torch.save(best_state, a.save)
    causality_check(model, dev, voc)
    print(f"best dev {best * 100:.2f}", flush=True)
    if a.test:
        test = read_conllu(find_split(ewt, "test"))
        print(f"test {evaluate(model, test, voc) * 100:.2f}", flush=True)
    words = [w for ws, _ in dev for w in ws]
    us, H, miss = numpy_cost(model, words, voc)
    print(f"numpy forward (hidden {H}): {us:.2f} us/word warm (per-word-type input cache); "
          f"a cache miss adds {miss:.1f} us", flush=True)


if __name__ == "__main__":
    main()
