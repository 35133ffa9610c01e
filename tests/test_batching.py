"""Tests for seq2seqkit.data.dataset: encoding/filtering a corpus, token batches, collate."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from seq2seqkit.config import CorpusConfig, DataConfig, TokenizerConfig
from seq2seqkit.data.dataset import EncodedCorpus, collate, encode_corpus, pad_sources, token_batches
from seq2seqkit.data.tokenizers import BOS, EOS, PAD, VocabTokenizer
from seq2seqkit.errors import DataError

ALPHABET = "abcdefghij"


def make_pairs(n: int = 200, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 20)))
        t = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 25)))
        pairs.append((s, t))
    return pairs


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


def char_toks(pairs: list[tuple[str, str]]) -> tuple[VocabTokenizer, VocabTokenizer]:
    cfg = TokenizerConfig(kind="char")
    return (VocabTokenizer.train(cfg, [s for s, _ in pairs]),
            VocabTokenizer.train(cfg, [t for _, t in pairs]))


PAIRS = make_pairs()


@pytest.fixture()
def corpus(tmp_path: Path) -> EncodedCorpus:
    path = write_tsv(tmp_path / "train.tsv", PAIRS)
    src_tok, tgt_tok = char_toks(PAIRS)
    return encode_corpus(CorpusConfig(path=str(path)), DataConfig(), src_tok, tgt_tok, "train")


# --- encode_corpus ----------------------------------------------------------------------

def test_encode_corpus_content(tmp_path: Path, corpus: EncodedCorpus):
    src_tok, tgt_tok = char_toks(PAIRS)
    assert len(corpus) == len(PAIRS)
    assert corpus.src_ids.dtype == np.int32 and corpus.src_off.dtype == np.int64
    assert corpus.src_lens.tolist() == [len(s) for s, _ in PAIRS]
    assert corpus.tgt_lens.tolist() == [len(t) for _, t in PAIRS]
    for i in (0, 17, len(PAIRS) - 1):
        assert corpus.src(i).tolist() == src_tok.encode(PAIRS[i][0])
        assert corpus.tgt(i).tolist() == tgt_tok.encode(PAIRS[i][1])
        assert tgt_tok.decode(corpus.tgt(i).tolist()) == PAIRS[i][1]


def test_encode_corpus_text_pair(tmp_path: Path):
    pairs = PAIRS[:10]
    (tmp_path / "a.src").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (tmp_path / "a.tgt").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    src_tok, tgt_tok = char_toks(pairs)
    enc = encode_corpus(CorpusConfig(src=str(tmp_path / "a.src"), tgt=str(tmp_path / "a.tgt")),
                        DataConfig(), src_tok, tgt_tok, "train")
    assert len(enc) == 10
    assert enc.src(3).tolist() == src_tok.encode(pairs[3][0])


FILTER_PAIRS = [
    ("abc", "de"),        # 1 kept
    ("", "x"),            # 2 empty source
    ("ab", "  "),         # 3 empty target (whitespace only)
    ("abcdefg", "a"),     # 4 source 7 chars > 6: too long
    ("a", "abcdefghi"),   # 5 target 9 chars > 8: too long
    ("abcdef", "abcdefgh"),  # 6 exactly at the limits: kept
    ("b", "c"),           # 7 kept
]


def filter_setup(tmp_path: Path, on_invalid: str):
    path = write_tsv(tmp_path / "f.tsv", FILTER_PAIRS)
    src_tok, tgt_tok = char_toks([("abcdefg", "abcdefghix")])
    data = DataConfig(max_src_len=6, max_tgt_len=8, on_invalid=on_invalid)
    return path, data, src_tok, tgt_tok


def test_encode_corpus_skips_invalid(tmp_path: Path):
    path, data, src_tok, tgt_tok = filter_setup(tmp_path, "skip")
    enc = encode_corpus(CorpusConfig(path=str(path)), data, src_tok, tgt_tok, "train")
    assert len(enc) == 3
    assert enc.src_lens.tolist() == [3, 6, 1]
    assert enc.tgt_lens.tolist() == [2, 8, 1]
    assert src_tok.decode(enc.src(1).tolist()) == "abcdef"


@pytest.mark.parametrize("line, problem", [
    (2, "empty source side"),
    (3, "empty target side"),
    (4, "pair too long: 7 source / 1 target tokens"),
    (5, "pair too long: 1 source / 9 target tokens"),
])
def test_encode_corpus_error_names_file_and_line(tmp_path: Path, line, problem):
    path, data, src_tok, tgt_tok = filter_setup(tmp_path, "error")
    # Earlier offending rows become valid pairs so that the row at `line` is the first bad one.
    pairs = [p if i + 1 >= line else ("a", "b") for i, p in enumerate(FILTER_PAIRS)]
    write_tsv(path, pairs)
    with pytest.raises(DataError) as info:
        encode_corpus(CorpusConfig(path=str(path)), data, src_tok, tgt_tok, "train")
    err = info.value
    assert err.path == str(path)
    assert err.line == line
    assert str(err).startswith(f"{path}:{line}: {problem}")
    assert "data.on_invalid=skip" in str(err)


def test_encode_corpus_nothing_usable(tmp_path: Path):
    path = write_tsv(tmp_path / "e.tsv", [("", "a"), ("b", "")])
    src_tok, tgt_tok = char_toks([("ab", "ab")])
    with pytest.raises(DataError) as info:
        encode_corpus(CorpusConfig(path=str(path)), DataConfig(), src_tok, tgt_tok, "dev")
    assert str(info.value) == f"{path}: no usable pairs in the dev data: all 2 pairs have an empty side"


# --- token_batches ----------------------------------------------------------------------

def budget_ok(batch: np.ndarray, src_lens, tgt_lens, budget: int) -> bool:
    width = int(max(max(src_lens[i], tgt_lens[i]) for i in batch)) + 1
    return len(batch) * width <= budget


@pytest.mark.parametrize("seed", [0, 7, None])
@pytest.mark.parametrize("budget", [26, 64, 300])
def test_token_batches_cover_and_respect_budget(corpus: EncodedCorpus, seed, budget):
    sl, tl = corpus.src_lens, corpus.tgt_lens
    batches = token_batches(sl, tl, budget, seed, epoch=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(corpus)))  # every index exactly once
    assert all(len(b) >= 1 for b in batches)
    for b in batches:
        assert budget_ok(b, sl, tl, budget), (b, budget)
    assert len(batches) < len(corpus)  # short examples do share batches
    if seed is None:  # in sorted order, packing is greedy: one more example would not fit
        for cur, nxt in zip(batches, batches[1:]):
            assert not budget_ok(np.append(cur, nxt[0]), sl, tl, budget)


def test_token_batches_over_long_example_alone():
    src_lens = np.array([3, 50, 2, 4, 60, 1])
    tgt_lens = np.array([2, 1, 3, 4, 2, 1])
    batches = token_batches(src_lens, tgt_lens, 20, seed=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    for b in batches:
        if any(src_lens[i] + 1 > 20 for i in b):
            assert len(b) == 1
        else:
            assert budget_ok(b, src_lens, tgt_lens, 20)
    singles = sorted(int(b[0]) for b in batches if len(b) == 1 and src_lens[b[0]] > 19)
    assert singles == [1, 4]


def test_token_batches_exact_packing_no_seed():
    # all width 5 (4 tokens + 1): budget 15 -> 3 per batch
    src_lens = np.array([4] * 7)
    tgt_lens = np.array([2] * 7)
    batches = token_batches(src_lens, tgt_lens, 15, seed=None)
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]


def test_token_batches_deterministic_per_seed_epoch(corpus: EncodedCorpus):
    sl, tl = corpus.src_lens, corpus.tgt_lens
    a = token_batches(sl, tl, 64, seed=5, epoch=1)
    b = token_batches(sl, tl, 64, seed=5, epoch=1)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    c = token_batches(sl, tl, 64, seed=5, epoch=2)
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    d = token_batches(sl, tl, 64, seed=6, epoch=1)
    assert [x.tolist() for x in a] != [x.tolist() for x in d]


def test_token_batches_no_seed_sorted_and_fixed(corpus: EncodedCorpus):
    sl, tl = corpus.src_lens, corpus.tgt_lens
    a = token_batches(sl, tl, 64, seed=None, epoch=0)
    b = token_batches(sl, tl, 64, seed=None, epoch=9)  # epoch is ignored without a seed
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    order = np.concatenate(a)
    # sorted by (target length, source length), ties in index order (stable)
    expected = sorted(range(len(sl)), key=lambda i: (tl[i], sl[i], i))
    assert order.tolist() == expected


def test_token_batches_keep_target_padding_low():
    """Target tokens cost more than source tokens, so batches pad the target side least."""
    rng = np.random.default_rng(0)
    src_lens, tgt_lens = rng.integers(5, 40, size=3000), rng.integers(5, 40, size=3000)
    batches = token_batches(src_lens, tgt_lens, 1000, seed=1)

    def padding(lens: np.ndarray) -> float:
        return 1 - lens.sum() / sum(len(b) * lens[b].max() for b in batches)

    assert padding(tgt_lens) < 0.02 < 0.15 < padding(src_lens)


# --- collate ----------------------------------------------------------------------------

def test_collate(tmp_path: Path):
    pairs = [("abc", "de"), ("a", "defgh"), ("bcbcb", "e")]
    path = write_tsv(tmp_path / "c.tsv", pairs)
    src_tok, tgt_tok = char_toks(pairs)
    enc = encode_corpus(CorpusConfig(path=str(path)), DataConfig(), src_tok, tgt_tok, "train")
    idx = np.array([2, 0, 1])
    batch = collate(enc, idx)
    s = {c: src_tok.stoi[c] for c in "abc"}
    t = {c: tgt_tok.stoi[c] for c in "defgh"}
    assert batch.src.dtype == torch.long and batch.tgt_in.dtype == torch.long
    assert batch.src.tolist() == [
        [s["b"], s["c"], s["b"], s["c"], s["b"], EOS],
        [s["a"], s["b"], s["c"], EOS, PAD, PAD],
        [s["a"], EOS, PAD, PAD, PAD, PAD],
    ]
    assert batch.src_lens.tolist() == [6, 4, 2]
    assert batch.tgt_in.tolist() == [
        [BOS, t["e"], PAD, PAD, PAD, PAD],
        [BOS, t["d"], t["e"], PAD, PAD, PAD],
        [BOS, t["d"], t["e"], t["f"], t["g"], t["h"]],
    ]
    assert batch.tgt_out.tolist() == [
        [t["e"], EOS, PAD, PAD, PAD, PAD],
        [t["d"], t["e"], EOS, PAD, PAD, PAD],
        [t["d"], t["e"], t["f"], t["g"], t["h"], EOS],
    ]
    assert batch.indices.tolist() == [2, 0, 1]
    assert batch.n_tokens == 2 + 3 + 6
    moved = batch.to(torch.device("cpu"))
    assert torch.equal(moved.tgt_out, batch.tgt_out)


def test_pad_sources_from_lists():
    src, lens = pad_sources([[5, 6], [], [7]])
    assert src.tolist() == [[5, 6, EOS], [EOS, PAD, PAD], [7, EOS, PAD]]
    assert lens.tolist() == [3, 1, 2]
