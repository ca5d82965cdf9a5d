"""Longest word and sentence the segmenter finds in the project's real text (../shared/data): the numbers that
justify the analyzer's caps (asa_runtime/linguistics/segment.py MAX_WORD_CHARS, docs/linguistics.md).

    python bench/fuzz/word_lengths.py [--chars 20000000]

Text: ELTeC English novels and Standard Ebooks (prose), WikiText-2 valid + test, UD EWT (web text), each cut
at --chars characters, through the asa-small tokenizer."""
from __future__ import annotations

import argparse
import json
import lzma
import sys
from pathlib import Path

from asa_runtime.linguistics.segment import Segmenter
from asa_runtime.registry import resolve
from asa_runtime.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def sources(limit: int):
    def jsonl(glob):
        out, n = [], 0
        for p in sorted((DATA / "english_prose").glob(glob)):
            with lzma.open(p, "rt", encoding="utf-8") as f:
                for line in f:
                    t = json.loads(line).get("text", "")
                    out.append(t)
                    n += len(t)
                    if n >= limit:
                        return "\n\n".join(out)
        return "\n\n".join(out)

    yield "ELTeC prose", jsonl("eltec_eng/*.jsonl.xz")
    yield "Standard Ebooks prose", jsonl("standard_ebooks/*.jsonl.xz")
    for name in ("wiki.valid.tokens.xz", "wiki.test.tokens.xz"):
        with lzma.open(DATA / "wikitext2_tokenized" / name, "rt", encoding="utf-8") as f:
            yield "WikiText-2 " + name.split(".")[1], f.read()[:limit]
    with lzma.open(DATA / "ud_english_ewt" / "en_ewt-ud-train.conllu.xz", "rt", encoding="utf-8") as f:
        yield "UD EWT train", "\n".join(l[len("# text = "):] for l in f if l.startswith("# text = "))[:limit]


def measure(text: str, tok: Tokenizer, chunk: int = 200_000) -> dict:
    seg = Segmenter()
    best = {"chars": (0, ""), "tokens": (0, ""), "sent_words": 0, "sent_tokens": 0}
    cur_w, cur_tok, wchars, sent, s_words, s_tok, n_tok = -1, 0, "", -1, 0, 0, 0
    for s in range(0, len(text), chunk):      # chunked encode: a piece boundary every 200k chars is immaterial
        for i in tok.encode(text[s:s + chunk]):
            p = tok.pieces[i]
            n_tok += 1
            w, new, kind, sn = seg.push(p)
            if new:
                cur_tok, wchars = 0, ""
                if sn != sent:
                    sent, s_words, s_tok = sn, 0, 0
                s_words += 1
            cur_tok += 1
            s_tok += 1
            wchars += p if not new else p.lstrip()
            if len(wchars) > best["chars"][0]:
                best["chars"] = (len(wchars), wchars[:80])
            if cur_tok > best["tokens"][0]:
                best["tokens"] = (cur_tok, wchars[:80])
            best["sent_words"] = max(best["sent_words"], s_words)
            best["sent_tokens"] = max(best["sent_tokens"], s_tok)
    best["n_tokens"] = n_tok
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chars", type=int, default=20_000_000)
    a = ap.parse_args()
    tok = Tokenizer.from_file(resolve("asa-small") / "tokenizer.json")
    for name, text in sources(a.chars):
        b = measure(text, tok)
        print(f"{name}: {b['n_tokens']} tokens; longest word {b['chars'][0]} chars ({b['chars'][1]!r}), "
              f"most tokens in a word {b['tokens'][0]} ({b['tokens'][1]!r}); longest sentence "
              f"{b['sent_words']} words / {b['sent_tokens']} tokens", flush=True)


if __name__ == "__main__":
    sys.exit(main())
