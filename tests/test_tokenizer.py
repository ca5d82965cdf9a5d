"""Tokenizer: training, exact save/load round trip, and per-id pieces."""
import pytest

from asa_runtime.tokenizer import EOS, Tokenizer

TEXTS = [
    "The cat sat on the mat. The dog chased the cat around the garden.",
    "She said, \u201cI will not go,\u201d and closed the door \u2014 quietly.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9; numbers 1234 and 5678.",
] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, vocab_size=400)


def test_train_roundtrip_text(tok):
    for text in TEXTS[:3] + ["unseen w\u00f6rds \u65e5\u672c\u8a9e \U0001F600", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert 256 < tok.vocab_size <= 400
    assert tok.encode(EOS) == [tok.eos_id]
    # EOS inside text is one token, not split into bytes
    ids = tok.encode(f"end.{EOS}Start")
    assert ids.count(tok.eos_id) == 1


def test_save_load_identical(tok, tmp_path):
    p = tmp_path / "tokenizer.json"
    tok.save(p)
    tok2 = Tokenizer.from_file(p)
    assert tok2.vocab_size == tok.vocab_size and tok2.eos_id == tok.eos_id
    for text in TEXTS[:3]:
        assert tok2.encode(text) == tok.encode(text)
    assert tok2.pieces == tok.pieces


def test_pieces_decode_alone(tok):
    pieces = tok.pieces
    assert len(pieces) == tok.vocab_size
    assert pieces[tok.eos_id] == EOS
    ids = tok.encode("The cat sat on the mat.")
    assert "".join(pieces[i] for i in ids) == "The cat sat on the mat."
    assert any(p.startswith(" ") for p in pieces)  # GPT-2 style leading-space pieces
    # a character outside the learned merges splits into byte ids; each alone is a partial UTF-8 sequence
    byte_ids = tok.encode("\u65e5")
    assert len(byte_ids) == 3 and all("\ufffd" in pieces[i] for i in byte_ids)
    assert tok.pieces is pieces  # cached


def test_piece_bytes_join_to_the_text_even_inside_a_character(tok):
    text = "Æsop’s “naïve” fox — 42 😀 ends."
    ids = tok.encode(text)
    assert b"".join(tok.piece_bytes[i] for i in ids) == text.encode()
    # a piece that is part of a character has bytes but no text of its own
    assert any(tok.pieces[i] == "\ufffd" and tok.piece_bytes[i] for i in ids)
    assert tok.piece_bytes[tok.eos_id] == EOS.encode()
    for i in range(tok.vocab_size):          # where a piece is whole text, the bytes are that text
        if "\ufffd" not in tok.pieces[i]:
            assert tok.piece_bytes[i].decode() == tok.pieces[i]
