"""Encoded corpora and token-count batches.

A corpus is streamed from disk once, encoded, and kept only as flat int32 id arrays (the text
is not held alongside). Batches are built by token count with length bucketing, so a batch
of short sentences holds many of them and a batch of long ones few, with little padding.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import CorpusConfig, DataConfig
from ..errors import DataError
from .corpus import Example, has_text, iter_examples, require_usable
from .tokenizers import BOS, EOS, PAD, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class EncodedCorpus:
    """Token ids of both sides, concatenated; ``*_off[i]:*_off[i+1]`` is example ``i``."""

    src_ids: np.ndarray
    src_off: np.ndarray
    tgt_ids: np.ndarray
    tgt_off: np.ndarray

    def __len__(self) -> int:
        return len(self.src_off) - 1

    @property
    def src_lens(self) -> np.ndarray:
        return np.diff(self.src_off)

    @property
    def tgt_lens(self) -> np.ndarray:
        return np.diff(self.tgt_off)

    def src(self, i: int) -> np.ndarray:
        return self.src_ids[self.src_off[i] : self.src_off[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_ids[self.tgt_off[i] : self.tgt_off[i + 1]]


def cut_sources(sources: list[list[int]], data: DataConfig, name: str) -> list[list[int]]:
    """Sources to decode, cut to ``data.max_src_len`` tokens where ``data.truncate_src`` says
    so (as in training), with a warning that counts them; unchanged otherwise."""
    if not data.truncate_src:
        return sources
    cut = sum(len(s) > data.max_src_len for s in sources)
    if cut:
        log.warning("%s: cut %d of %d inputs to data.max_src_len=%d tokens (the model was trained with "
                    "data.truncate_src)", name, cut, len(sources), data.max_src_len)
    return [s[: data.max_src_len] for s in sources]


def corpus_texts(corpus: CorpusConfig, side: str) -> Iterator[str]:
    """One side of a corpus as text, streamed (for training tokenizers)."""
    for ex in iter_examples(*corpus.files(), fmt=corpus.format):
        yield ex.src if side == "src" else ex.tgt


@dataclass
class EncodeCounts:
    """What :func:`encode_pairs` did with the pairs it read."""

    kept: int = 0
    empty: int = 0  # skipped: an empty side
    too_long: int = 0  # skipped: over data.max_src_len / data.max_tgt_len
    cut: int = 0  # kept with the source cut to data.max_src_len (data.truncate_src)

    @property
    def read(self) -> int:
        return self.kept + self.empty + self.too_long


def encode_pairs(corpus: CorpusConfig, data: DataConfig, src_tok: Tokenizer, tgt_tok: Tokenizer,
                 counts: EncodeCounts, examples: Iterable[Example] | None = None) -> Iterator[tuple[list[int], list[int]]]:
    """Stream, encode and filter one split: the (source ids, target ids) of each kept pair, in
    file order. Empty sides and over-long pairs are skipped (counted in ``counts``) or, with
    ``data.on_invalid=error``, reported with file:line. With ``data.truncate_src`` an over-long
    source is cut to ``data.max_src_len`` tokens instead (counted). Both the in-memory corpus
    and the shards on disk (shards.py) are built from this one loop. ``examples``: the split's
    examples where the caller has read them already (else they are read from its files)."""
    path = corpus.path or corpus.src
    for ex in iter_examples(*corpus.files(), fmt=corpus.format) if examples is None else examples:
        problem = kind = None
        if not has_text(ex):
            kind, problem = "empty", f"empty {'source' if not ex.src.strip() else 'target'} side"
        else:
            s, t = src_tok.encode(ex.src), tgt_tok.encode(ex.tgt)
            was_cut = data.truncate_src and len(s) > data.max_src_len
            s = s[: data.max_src_len] if was_cut else s
            if len(s) > data.max_src_len or len(t) > data.max_tgt_len:
                kind = "too_long"
                problem = (
                    f"pair too long: {len(s)} source / {len(t)} target tokens "
                    f"(data.max_src_len={data.max_src_len}, data.max_tgt_len={data.max_tgt_len})"
                )
        if problem:
            if data.on_invalid == "error":
                raise DataError(path or "", ex.line, problem + " (set data.on_invalid=skip to drop such pairs)")
            setattr(counts, kind, getattr(counts, kind) + 1)
            continue
        counts.cut += was_cut
        counts.kept += 1
        yield s, t


def report_encoding(counts: EncodeCounts, corpus: CorpusConfig, data: DataConfig, name: str) -> None:
    """Log what was skipped or cut, and refuse a split without one usable pair."""
    n = counts.kept
    if counts.empty or counts.too_long:
        log.info("%s: kept %d pairs, skipped %d empty and %d too long", name, n, counts.empty, counts.too_long)
    if counts.cut:
        log.info("%s: cut %d of %d sources to data.max_src_len=%d tokens (data.truncate_src)", name, counts.cut, n,
                 data.max_src_len)
    require_usable(corpus.path or corpus.src or "", name, n, counts.read, counts.too_long)


def encode_corpus(
    corpus: CorpusConfig, data: DataConfig, src_tok: Tokenizer, tgt_tok: Tokenizer, name: str,
    examples: Iterable[Example] | None = None,
) -> EncodedCorpus:
    """:func:`encode_pairs` into memory: the whole split as flat int32 id arrays."""
    src_ids, tgt_ids = array("i"), array("i")
    src_off, tgt_off = array("q", [0]), array("q", [0])
    counts = EncodeCounts()
    for s, t in encode_pairs(corpus, data, src_tok, tgt_tok, counts, examples):
        src_ids.extend(s)
        tgt_ids.extend(t)
        src_off.append(len(src_ids))
        tgt_off.append(len(tgt_ids))
    report_encoding(counts, corpus, data, name)
    as_np = lambda a, t: np.frombuffer(a, dtype=t).copy()  # noqa: E731
    return EncodedCorpus(as_np(src_ids, np.int32), as_np(src_off, np.int64), as_np(tgt_ids, np.int32), as_np(tgt_off, np.int64))


@dataclass
class Batch:
    """Padded tensors. The source ends in EOS; ``tgt_in`` = BOS + target, ``tgt_out`` = target + EOS."""

    src: torch.Tensor  # (B, S)
    src_lens: torch.Tensor  # (B,)
    tgt_in: torch.Tensor  # (B, T)
    tgt_out: torch.Tensor  # (B, T)
    indices: np.ndarray  # positions in the corpus, to put outputs back in order

    @property
    def n_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return Batch(
            self.src.to(device, non_blocking=nb), self.src_lens.to(device, non_blocking=nb),
            self.tgt_in.to(device, non_blocking=nb), self.tgt_out.to(device, non_blocking=nb), self.indices,
        )


def pad_sources(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences and append EOS: (B, S) ids and (B,) lengths."""
    lens = torch.tensor([len(s) + 1 for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lens.max())), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        out[i, len(s)] = EOS
    return out, lens


def make_batch(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
               indices: np.ndarray | None = None) -> Batch:
    """Pad id sequences into a :class:`Batch` (EOS on the source, BOS/EOS around the target)."""
    src, src_lens = pad_sources(sources)
    t = max(len(x) for x in targets) + 1
    tgt_in = torch.full((len(targets), t), PAD, dtype=torch.long)
    tgt_out = torch.full((len(targets), t), PAD, dtype=torch.long)
    for i, x in enumerate(targets):
        ids = torch.as_tensor(np.asarray(x, dtype=np.int64))
        tgt_in[i, 0] = BOS
        tgt_in[i, 1 : len(x) + 1] = ids
        tgt_out[i, : len(x)] = ids
        tgt_out[i, len(x)] = EOS
    return Batch(src, src_lens, tgt_in, tgt_out, np.arange(len(targets)) if indices is None else indices)


def collate(corpus: EncodedCorpus, indices: np.ndarray) -> Batch:
    return make_batch([corpus.src(i) for i in indices], [corpus.tgt(i) for i in indices], indices)


def token_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, batch_tokens: int, seed: int | None, epoch: int = 0
) -> list[np.ndarray]:
    """Group example indices into batches of at most ``batch_tokens`` padded tokens.

    Examples are sorted by target length, then source length (a random permutation first
    breaks ties, so buckets differ between epochs), packed greedily, and the batch order is
    shuffled. Target first because a target token costs more than a source token (decoder
    layers with cross-attention, the vocabulary projection, and for RNNs a sequential step):
    on Multi30k with 4096-token batches this leaves about 0.5% target and 12% source padding
    (the "padding" column of ``bench/speed.py``), where source-first sorting left 0.6% source
    and 12% target padding. The result depends on
    ``(seed, epoch)`` only, which is what lets a resumed run skip exactly the batches it had
    done. ``seed=None`` gives a fixed, unshuffled order (for evaluation).
    """
    n = len(src_lens)
    # Indices as int32 where they fit and the packing loop fed in chunks: on a corpus of
    # millions of pairs (read from shards, shards.py) the batching's memory stays a few bytes
    # a pair. The permutation is the same as rng.permutation(n) gives.
    index = np.int32 if n < 2**31 else np.int64
    rng = np.random.default_rng([seed, epoch]) if seed is not None else None
    perm = rng.permutation(np.arange(n, dtype=index)) if rng is not None else np.arange(n, dtype=index)
    # +1: EOS on the source, BOS/EOS on the target.
    order = perm[np.lexsort((src_lens[perm] + 1, tgt_lens[perm] + 1))]  # the last key sorts first: target, then source
    del perm
    longest = np.maximum(src_lens, tgt_lens)[order] + 1
    batches: list[np.ndarray] = []
    start, width, chunk = 0, 0, 1 << 16
    for base in range(0, n, chunk):
        for i, length in enumerate(longest[base : base + chunk].tolist(), base):
            w = max(width, length)
            if i > start and w * (i - start + 1) > batch_tokens:
                batches.append(order[start:i])
                start, w = i, length
            width = w
    batches.append(order[start:n])
    if rng is not None:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches
