"""Word-level token pieces for when no trained BPE tokenizer is at hand (analysis, benches, tests).

The pattern is GPT-2's byte-level pre-tokenizer (the one our BPE tokenizer splits on before merging),
so a piece here is what a BPE token would be if every pre-token were in the vocabulary."""
from __future__ import annotations

import re

_PRETOKEN = re.compile(r"""'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|_+|\s+(?!\S)|\s+""")


def word_pieces(text: str) -> list[str]:
    pieces = _PRETOKEN.findall(text)
    assert "".join(pieces) == text, "pre-tokenizer must cover the text"
    return pieces
