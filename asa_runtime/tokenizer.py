"""Byte-level BPE tokenizer (HF `tokenizers`), saved as tokenizer.json beside the model.

"<|endoftext|>" is the one special token: end of text and document separator. `pieces[id]` is the text an
id decodes to on its own (" the", "\\n"; ids that are part of a multi-byte UTF-8 character decode to a
string with U+FFFD): the analyzer works on these pieces, never on ids.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        eos = hf.token_to_id(EOS)
        if eos is None:
            raise ValueError(f"tokenizer has no {EOS} token")
        self.eos_id: int = eos

    # ---- construction / persistence -------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls(HFTokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, json_text: str) -> "Tokenizer":
        return cls(HFTokenizer.from_str(json_text))

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    def to_str(self) -> str:
        return self.hf.to_str()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              show_progress: bool = False) -> "Tokenizer":
        """Train a byte-level BPE (GPT-2 style) on `texts`. Every byte has an id, so any text encodes."""
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    # ---- use ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    @cached_property
    def pieces(self) -> list[str]:
        """For every id, the text it decodes to on its own."""
        return [self.hf.decode([i], skip_special_tokens=False) for i in range(self.vocab_size)]

    @cached_property
    def piece_bytes(self) -> list[bytes]:
        """For every id, its bytes (a piece that is part of a multi-byte character has no text of its own:
        `pieces` shows U+FFFD there). Byte-level BPE writes byte b as the character _BYTE_CHARS[b]; added tokens
        (EOS) are their text."""
        dec = {c: b for b, c in enumerate(_byte_chars())}
        added = {t.content for t in self.hf.get_added_tokens_decoder().values()}
        out = []
        for i in range(self.vocab_size):
            t = self.hf.id_to_token(i) or ""
            out.append(t.encode() if t in added or any(c not in dec for c in t) else bytes(dec[c] for c in t))
        return out

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, the one tokenizers' ByteLevel pre-tokenizer uses: printable
    Latin-1 bytes stand for themselves, the other 68 bytes take the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 256 + 256))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]

