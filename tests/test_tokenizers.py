"""Tests for seq2seqkit.data.tokenizers: round trips, special ids, vocab limits, save/load."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from seq2seqkit.config import TokenizerConfig, TokenizersConfig
from seq2seqkit.data.tokenizers import (
    BOS,
    EOS,
    MANIFEST,
    PAD,
    RESERVED,
    SEP,
    SPACE,
    SPECIALS,
    UNK,
    SentencePieceTokenizer,
    VocabTokenizer,
    load_tokenizers,
    save_tokenizers,
    train_tokenizers,
)

WORDS = ("the cat dog sat on a mat and ran over hill big small red blue green "
         "fox jumps quick brown lazy").split()


def make_corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(n)]


CORPUS = make_corpus()
# Every character in the corpus (the letters of WORDS plus the space).
CORPUS_CHARS = sorted(set("".join(CORPUS)))


def sp_cfg(model_type: str, vocab_size: int = 80, **kw) -> TokenizerConfig:
    return TokenizerConfig(kind="sentencepiece", model_type=model_type, vocab_size=vocab_size, **kw)


@pytest.fixture(scope="module")
def sp_models() -> dict[str, SentencePieceTokenizer]:
    return {mt: SentencePieceTokenizer.train(sp_cfg(mt), CORPUS) for mt in ("unigram", "bpe")}


def test_special_ids_constants():
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    assert SPECIALS == ("<pad>", "<unk>", "<s>", "</s>")
    assert RESERVED == (*SPECIALS, SEP) and SEP == "<sep>"
    assert SPACE == "\u2581"


# --- char -------------------------------------------------------------------------------

def test_char_vocab_is_specials_then_frequency_order():
    tok = VocabTokenizer.train(TokenizerConfig(kind="char"), ["aab", "b c"])
    # counts: a=2, b=2, ' '=1, c=1 -> ties broken by the token itself ('▁' sorts after 'c')
    assert tok.itos == ["<pad>", "<unk>", "<s>", "</s>", "<sep>", "a", "b", "c", SPACE]
    assert tok.vocab_size == 9
    assert [tok.id_to_piece(i) for i in range(4)] == list(SPECIALS)


def test_char_round_trip_spaces_spelled_u2581():
    tok = VocabTokenizer.train(TokenizerConfig(kind="char"), CORPUS)
    assert tok.vocab_size == len(RESERVED) + len(CORPUS_CHARS)
    assert " " not in tok.itos and SPACE in tok.itos
    for text in CORPUS[:50]:
        ids = tok.encode(text)
        assert len(ids) == len(text)
        assert UNK not in ids and min(ids) >= len(RESERVED)
        assert tok.decode(ids) == text
    assert tok.pieces("a cat") == ["a", SPACE, "c", "a", "t"]


def test_char_whitespace_runs_normalise_to_one_space():
    tok = VocabTokenizer.train(TokenizerConfig(kind="char"), CORPUS)
    ids = tok.encode("  the \t cat  sat  ")
    assert ids == tok.encode("the cat sat")
    assert tok.decode(ids) == "the cat sat"
    # a line break is not a space but the <sep> piece (blanks around it and runs of breaks: one)
    ids = tok.encode("  the \t cat \r\n\nsat  ")
    assert ids == tok.encode("the cat<sep>sat") and ids.count(tok.sep_id) == 1
    assert tok.decode(ids) == "the cat\nsat"
    assert tok.pieces("a  b") == ["a", SPACE, "b"]


def test_char_unknown_maps_to_unk():
    tok = VocabTokenizer.train(TokenizerConfig(kind="char"), CORPUS)
    ids = tok.encode("caTé")
    assert ids[:2] == [tok.stoi["c"], tok.stoi["a"]]
    assert ids[2:] == [UNK, UNK]
    assert tok.decode(ids) == "ca<unk><unk>"


def test_char_decode_drops_pad_bos_eos():
    tok = VocabTokenizer.train(TokenizerConfig(kind="char"), ["ab"])
    a, b = tok.stoi["a"], tok.stoi["b"]
    assert tok.decode([BOS, a, PAD, b, EOS, PAD]) == "ab"


# --- word -------------------------------------------------------------------------------

def test_word_round_trip_and_unknown():
    tok = VocabTokenizer.train(TokenizerConfig(kind="word"), CORPUS)
    assert tok.vocab_size == len(RESERVED) + len(WORDS)
    assert set(tok.itos[len(RESERVED):]) == set(WORDS)
    for text in CORPUS[:50]:
        ids = tok.encode(text)
        assert len(ids) == len(text.split())
        assert tok.decode(ids) == text
    assert tok.encode("the  zebra\tcat") == [tok.stoi["the"], UNK, tok.stoi["cat"]]
    assert tok.decode(tok.encode("the  zebra\tcat")) == "the <unk> cat"
    assert tok.pieces("red fox") == ["red", "fox"]


def test_word_min_freq():
    texts = ["a a a b b c", "a b d"]  # a=4, b=3, c=1, d=1
    tok = VocabTokenizer.train(TokenizerConfig(kind="word", min_freq=2), texts)
    assert tok.itos == list(RESERVED) + ["a", "b"]
    assert tok.encode("a c b d") == [5, UNK, 6, UNK]
    tok1 = VocabTokenizer.train(TokenizerConfig(kind="word", min_freq=1), texts)
    assert tok1.itos == list(RESERVED) + ["a", "b", "c", "d"]


def test_max_vocab_counts_specials():
    texts = ["a a a b b c", "a b d"]
    tok = VocabTokenizer.train(TokenizerConfig(kind="word", max_vocab=6), texts)
    assert tok.vocab_size == 6
    assert tok.itos == list(RESERVED) + ["a"]
    assert tok.encode("a b") == [5, UNK]
    tok_c = VocabTokenizer.train(TokenizerConfig(kind="char", max_vocab=7), ["aaab b"])
    assert tok_c.itos == list(RESERVED) + ["a", "b"]  # ' ' (count 1) is cut
    assert tok_c.encode("a b") == [5, UNK, 6]
    assert VocabTokenizer.train(TokenizerConfig(kind="word", max_vocab=5), texts).itos == list(RESERVED)


def test_lowercase_vocab():
    tok = VocabTokenizer.train(TokenizerConfig(kind="word", lowercase=True), ["The CAT", "the cat"])
    assert tok.itos == list(RESERVED) + ["cat", "the"]
    assert tok.encode("THE Cat") == [6, 5]
    assert tok.decode(tok.encode("THE Cat")) == "the cat"
    cased = VocabTokenizer.train(TokenizerConfig(kind="word"), ["The CAT", "the cat"])
    assert cased.vocab_size == 9
    assert cased.encode("THE Cat") == [UNK, UNK]


def test_lowercase_sentencepiece():
    tok = SentencePieceTokenizer.train(sp_cfg("unigram", lowercase=True), CORPUS)
    assert tok.encode("The RED Fox") == tok.encode("the red fox")
    assert tok.decode(tok.encode("The RED Fox")) == "the red fox"


# --- sentencepiece ----------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_specials(sp_models, model_type):
    tok = sp_models[model_type]
    assert [tok.sp.id_to_piece(i) for i in range(4)] == list(SPECIALS)
    assert [tok.id_to_piece(i) for i in range(4)] == list(SPECIALS)
    assert (tok.sp.pad_id(), tok.sp.unk_id(), tok.sp.bos_id(), tok.sp.eos_id()) == (PAD, UNK, BOS, EOS)
    assert tok.kind == "sentencepiece"
    # hard_vocab_limit is off: never more than asked for, and at least the chars + specials
    assert 4 + len(CORPUS_CHARS) <= tok.vocab_size <= 80


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_round_trip(sp_models, model_type):
    tok = sp_models[model_type]
    for text in CORPUS[:100]:
        ids = tok.encode(text)
        assert all(4 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert tok.decode(tok.encode("  the   cat ")) == "the cat"  # whitespace normalised


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_unknown_chars(sp_models, model_type):
    tok = sp_models[model_type]
    ids = tok.encode("Q")  # 'Q' never appears in the (lowercase) training corpus
    assert UNK in ids
    assert [i for i in ids if i != UNK] in ([], [tok.sp.piece_to_id(SPACE)])


def test_sentencepiece_deterministic():
    for mt in ("unigram", "bpe"):
        a = SentencePieceTokenizer.train(sp_cfg(mt), CORPUS)
        b = SentencePieceTokenizer.train(sp_cfg(mt), CORPUS)
        assert a.proto == b.proto, mt
        assert len(a.proto) > 100


@pytest.mark.parametrize("seed", [-1, 2**40])
def test_sentencepiece_any_int_seed(seed):
    # config seeds are unbounded ints; sentencepiece takes an unsigned 32-bit seed
    tok = SentencePieceTokenizer.train(sp_cfg("bpe"), CORPUS[:100], seed=seed)
    assert [tok.id_to_piece(i) for i in range(4)] == list(SPECIALS)
    assert tok.decode(tok.encode(CORPUS[0])) == CORPUS[0]


def test_train_tokenizers_joint_shares_one_object():
    cfg = TokenizersConfig(src=TokenizerConfig(kind="char"), tgt=TokenizerConfig(kind="char"), joint=True)
    src, tgt = train_tokenizers(cfg, ["ab"], ["cd"])
    assert src is tgt
    assert src.itos == list(RESERVED) + ["a", "b", "c", "d"]
    sep = TokenizersConfig(src=TokenizerConfig(kind="char"), tgt=TokenizerConfig(kind="word"), joint=False)
    s, t = train_tokenizers(sep, ["ab"], ["cd ef"])
    assert s is not t
    assert s.itos == list(RESERVED) + ["a", "b"]
    assert t.itos == list(RESERVED) + ["cd", "ef"]


# --- save / load ------------------------------------------------------------------------

PROBES = CORPUS[:20] + ["the zebra QUICK", "  x  y  "]


def check_same(before, after) -> None:
    assert type(after) is type(before)
    assert after.vocab_size == before.vocab_size
    assert after.lowercase == before.lowercase
    for text in PROBES:
        assert after.encode(text) == before.encode(text)
        assert after.decode(after.encode(text)) == before.decode(before.encode(text))


def test_save_load_separate(tmp_path: Path, sp_models):
    src = VocabTokenizer.train(TokenizerConfig(kind="char", lowercase=True), CORPUS)
    tgt = sp_models["bpe"]
    save_tokenizers(tmp_path / "m", src, tgt)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "src.vocab.json", "tgt.spm.model", MANIFEST]
    meta = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert meta["joint"] is False
    assert meta["src"] == {"kind": "char", "vocab": "src.vocab.json", "lowercase": True}
    s2, t2 = load_tokenizers(tmp_path / "m")
    assert s2 is not t2
    check_same(src, s2)
    check_same(tgt, t2)
    assert s2.itos == src.itos
    assert t2.proto == tgt.proto


@pytest.mark.parametrize("kind", ["word", "sentencepiece"])
def test_save_load_joint(tmp_path: Path, kind):
    tc = sp_cfg("unigram") if kind == "sentencepiece" else TokenizerConfig(kind="word")
    cfg = TokenizersConfig(src=tc, tgt=tc, joint=True)
    src, tgt = train_tokenizers(cfg, CORPUS[:150], CORPUS[150:])
    assert src is tgt
    save_tokenizers(tmp_path, src, tgt)
    files = sorted(p.name for p in tmp_path.iterdir())
    model_file = "src.spm.model" if kind == "sentencepiece" else "src.vocab.json"
    assert files == sorted([model_file, MANIFEST])  # one model file, no tgt.*
    meta = json.loads((tmp_path / MANIFEST).read_text())
    assert meta["joint"] is True and meta["tgt"] == meta["src"]
    s2, t2 = load_tokenizers(tmp_path)
    assert s2 is t2
    check_same(src, s2)


def test_load_tokenizers_not_a_model_dir(tmp_path: Path):
    from seq2seqkit.errors import UserError

    with pytest.raises(UserError, match="no tokenizers.json"):
        load_tokenizers(tmp_path)
