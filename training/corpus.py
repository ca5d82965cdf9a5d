"""Training text: public-domain English prose (one book per JSON line, ../shared/data/english_prose) and
WikiText-2's tokenized valid/test splits (../shared/data/wikitext2_tokenized). See SOURCES.md there.

Splits are BY BOOK (a held-out book never contributes a line to training). WikiText-2's train split is not
available here, so `select_books(..., max_words=2_000_000)` gives a WikiText-2-sized training slice.
"""
from __future__ import annotations

import json
import lzma
import os
import random
from dataclasses import dataclass
from pathlib import Path

PROSE_FILES = ("english_prose/eltec_eng/eltec_eng_level1.jsonl.xz",
               "english_prose/standard_ebooks/standard_ebooks_selection.jsonl.xz")
WIKITEXT2 = {"wt2_valid": "wikitext2_tokenized/wiki.valid.tokens.xz",
             "wt2_test": "wikitext2_tokenized/wiki.test.tokens.xz"}


@dataclass
class Book:
    id: str
    title: str
    author: str
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The shared data folder: explicit > $ASA_DATA > ../shared/data beside the repository."""
    for cand in (explicit, os.environ.get("ASA_DATA"), Path(__file__).resolve().parents[1] / ".." / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand).resolve()
    raise FileNotFoundError("shared data folder not found: pass --data-dir or set ASA_DATA")


def load_books(root: str | os.PathLike | None = None, files=PROSE_FILES) -> list[Book]:
    root = data_dir(root)
    books = []
    for rel in files:
        with lzma.open(root / rel, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                books.append(Book(d["id"], d.get("title", ""), d.get("author", ""), d["text"]))
    return books


def split_books(books: list[Book], n_valid: int = 4, seed: int = 0) -> tuple[list[Book], list[Book]]:
    """Shuffle books (seeded, by id so the order of files does not matter) and hold out `n_valid` whole books."""
    order = sorted(books, key=lambda b: b.id)
    random.Random(seed).shuffle(order)
    return order[n_valid:], order[:n_valid]


def select_books(books: list[Book], max_words: int | None) -> list[Book]:
    """Whole books in the given order until `max_words`; the last one is cut at a paragraph boundary."""
    if not max_words:
        return list(books)
    out, total = [], 0
    for b in books:
        if total >= max_words:
            break
        need = max_words - total
        if b.words <= need:
            out.append(b)
            total += b.words
            continue
        paras, kept, n = b.text.split("\n\n"), [], 0
        for p in paras:
            if n >= need:
                break
            kept.append(p)
            n += len(p.split())
        out.append(Book(b.id, b.title, b.author, "\n\n".join(kept)))
        total += n
    return out


def wikitext2(split: str, root: str | os.PathLike | None = None) -> str:
    """The tokenized WikiText-2 text ("wt2_valid" / "wt2_test"), lines as in the file."""
    with lzma.open(data_dir(root) / WIKITEXT2[split], "rt", encoding="utf-8") as f:
        return f.read()


def word_level_count(text: str) -> int:
    """Word-level tokens as the standard WikiText-2 LM setup counts them: whitespace tokens + one <eos> per line."""
    return sum(len(line.split()) + 1 for line in text.splitlines())
