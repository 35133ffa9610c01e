"""Tokenized corpora on disk: binary shards that training reads without loading the corpus.

``s2s preprocess CONFIG OUT_DIR`` (and, with ``data.cache``, the first training run) reads the
training split once, encodes it and writes a directory::

    OUT_DIR/shards.json           the header (below); written last: no header, no shards
    OUT_DIR/tokenizers.json ...   the tokenizers that made the ids (as in a model directory)
    OUT_DIR/train.src.ids         the token ids of every kept pair, concatenated, in the
                                  smallest unsigned integer type that holds the vocabulary
    OUT_DIR/train.src.off         int64 offsets: pair i is ids[off[i]:off[i+1]]
    OUT_DIR/train.tgt.ids, train.tgt.off

The header holds the format version, the tokenizers' fingerprints and settings, the data
settings that filtered the pairs (``data.max_src_len`` ...), each source file's path, size,
modification time and SHA-256, and the counts (pairs read, kept, skipped, cut; tokens).

The directory is built under a temporary name beside OUT_DIR and renamed into place when
complete, so an interrupted build leaves nothing that looks finished. Ids are written in
chunks as they are encoded, so building needs no more memory for a large corpus than for a
small one; the tokenizers are trained in one pass (SentencePiece on a bounded sample).

Training keeps only the lengths in memory (one small integer per pair and side, which is all
token-count batching needs) and reads the ids of one batch at a time with ``pread`` when it
collates it: no file is mapped, so the pages read do not count in the process's resident
memory, which stays flat as the corpus grows.

Without ``data.preprocessed``, training with ``data.cache: true`` (the default) keeps the shards
in ``$S2S_CACHE_DIR/shards/KEY`` (default ``~/.cache/seq2seqkit/shards/KEY``), KEY a hash of the
training files' paths, the tokenizer settings (and seed) and the data filters: a second run
with the same data and tokenizer settings skips tokenizer training and encoding. A cache
entry whose source files changed (size, mtime and then content are compared) or that is
damaged is rebuilt; a directory given as ``data.preprocessed`` is refused instead, in one line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write_text
from ..config import Config, CorpusConfig, DataConfig
from ..errors import DataError, UserError
from ..rundir import abandoned_scratch, scratch_dir
from .corpus import iter_examples, require_rereadable
from .dataset import EncodeCounts, EncodedCorpus, encode_corpus, encode_pairs, report_encoding
from .tokenizers import MANIFEST, Tokenizer, load_tokenizers, save_tokenizers, train_tokenizers_on_pairs

log = logging.getLogger("seq2seqkit")

FORMAT = 1  # the version of this layout; a directory of another version is refused
HEADER = "shards.json"
KIND = "shards"
SIDES = ("src", "tgt")
FILTERS = ("max_src_len", "max_tgt_len", "truncate_src", "on_invalid")  # data settings the shards were filtered by
CHUNK = 1 << 20  # ids (or offsets) buffered before a write, and read per validation step


# ----------------------------------------------------------------------------- helpers
def unsigned_dtype(largest: int) -> np.dtype:
    """The smallest unsigned integer type that holds ``largest``."""
    for t in (np.uint8, np.uint16, np.uint32):
        if largest <= np.iinfo(t).max:
            return np.dtype(t)
    return np.dtype(np.uint64)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def source_files(corpus: CorpusConfig) -> list[Path]:
    """The files a split is read from, as absolute paths (relative ones from the working directory)."""
    return [Path(p).resolve() for p in corpus.files() if p]


def _require_rereadable(corpus: CorpusConfig) -> None:
    for path in corpus.files():
        if path:
            require_rereadable(path, "training")


def file_identity(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(path, None, "no such file") from None
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def source_change(recorded: dict[str, Any]) -> str | None:
    """Why a source file the shards were made from no longer matches them, or None if it does:
    size and modification time first, then (same size, other time) the content."""
    path = Path(recorded["path"])
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} no longer exists"
    if st.st_size == recorded["size"] and st.st_mtime_ns == recorded["mtime_ns"]:
        return None
    if st.st_size == recorded["size"] and sha256_file(path) == recorded["sha256"]:
        return None
    return f"{path} has changed since the shards were written"


def cache_root() -> Path:
    root = os.environ.get("S2S_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "seq2seqkit") / "shards"


def cache_key(cfg: Config) -> str:
    """What decides the shards of a run that trains its own tokenizers: the training files, the
    tokenizer settings (and the seed, where SentencePiece is trained) and the data filters."""
    tok = cfg.tokenizer
    spec = {
        "format": FORMAT, "files": [str(p) for p in source_files(cfg.data.train)], "read_as": cfg.data.train.format,
        "tokenizer": tok.model_dump(mode="json"), "filters": {k: getattr(cfg.data, k) for k in FILTERS},
        "seed": cfg.training.seed if "sentencepiece" in (tok.src.kind, tok.tgt.kind) else None,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()[:24]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``: runs that share a cache entry build it once, the
    others wait and then read it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for p in directory.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_shards_dir(directory: Path) -> bool:
    """Whether ``directory`` holds a header this module wrote (of any format version)."""
    try:
        header = json.loads((directory / HEADER).read_text(encoding="utf-8"))
        return isinstance(header, dict) and header.get("seq2seqkit") == KIND
    except (OSError, ValueError):
        return False


def _own_names(directory: Path) -> set[str]:
    return {HEADER, MANIFEST, *(f"{split}.{side}.{ext}" for split in ("train",) for side in SIDES
                                 for ext in ("ids", "off"))} | _tokenizer_files(directory)


def _tokenizer_files(directory: Path) -> set[str]:
    try:
        meta = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        return {str(meta[s][k]) for s in SIDES for k in ("model", "vocab") if k in meta[s]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _only_ours(directory: Path) -> bool:
    """Whether ``directory`` holds nothing but files a build writes (a build's tokenizer spool included)."""
    own = _own_names(directory)
    return all(p.name in own or (p.is_dir() and p.name.startswith("s2s-tokenizer-texts-")) for p in directory.iterdir())


def _remove_stale_builds(out: Path) -> None:
    """Builds of ``out`` that an earlier process left half done (killed before it could clean up);
    a build that a live process is still writing is not touched (two ``s2s preprocess`` into one
    OUT_DIR: the first's build was deleted under it)."""
    for p in abandoned_scratch(out):
        if _only_ours(p):
            shutil.rmtree(p, ignore_errors=True)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished build ``tmp`` at ``out`` (an earlier shards directory there is replaced)."""
    if out.is_dir() and any(out.iterdir()):
        old = scratch_dir(out, ".old")
        os.replace(out, old)  # renames over the empty directory mkdtemp made
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)  # rename(2) replaces a missing or empty directory
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- writing
class _SideWriter:
    """Ids and offsets of one side of one split, appended pair by pair and written in chunks."""

    def __init__(self, directory: Path, split: str, side: str, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.ids_file = open(directory / f"{split}.{side}.ids", "wb")  # noqa: SIM115 (closed in close())
        self.off_file = open(directory / f"{split}.{side}.off", "wb")  # noqa: SIM115
        self.ids, self.offsets = array("q"), array("q", [0])
        self.tokens = 0
        self.longest = 0

    def add(self, ids: list[int]) -> None:
        self.ids.extend(ids)
        self.tokens += len(ids)
        self.longest = max(self.longest, len(ids))
        self.offsets.append(self.tokens)
        if len(self.ids) >= CHUNK or len(self.offsets) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        np.frombuffer(self.ids, dtype=np.int64).astype(self.dtype).tofile(self.ids_file)
        np.frombuffer(self.offsets, dtype=np.int64).tofile(self.off_file)
        del self.ids[:], self.offsets[:]

    def close(self) -> dict[str, Any]:
        try:
            self.flush()
        finally:
            self.ids_file.close()
            self.off_file.close()
        return {"dtype": self.dtype.name, "tokens": self.tokens, "longest": self.longest}


def _write_split(directory: Path, split: str, corpus: CorpusConfig, data: DataConfig,
                 src_tok: Tokenizer, tgt_tok: Tokenizer) -> dict[str, Any]:
    """Encode one split (the same loop as the in-memory corpus) into ``directory``; its header entry."""
    writers = {side: _SideWriter(directory, split, side, unsigned_dtype(tok.vocab_size - 1))
               for side, tok in zip(SIDES, (src_tok, tgt_tok))}
    counts = EncodeCounts()
    try:
        for s, t in encode_pairs(corpus, data, src_tok, tgt_tok, counts):
            writers["src"].add(s)
            writers["tgt"].add(t)
    finally:
        sides = {side: w.close() for side, w in writers.items()}
    report_encoding(counts, corpus, data, split)
    return {"read_as": corpus.format, "pairs_read": counts.read, "pairs": counts.kept, "skipped_empty": counts.empty,
            "skipped_too_long": counts.too_long, "cut": counts.cut, **sides}


def write_shards(cfg: Config, out: Path, tokenizers: tuple[Tokenizer, Tokenizer] | None = None) -> dict[str, Any]:
    """Build the shards of ``cfg.data.train`` at ``out`` (replacing a shards directory there),
    training the tokenizers unless they are given; returns the header. Built under a temporary
    name beside ``out`` and renamed when complete: nothing half-written is left, however it ends."""
    corpus = cfg.data.train
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out)
    tmp = scratch_dir(out, ".tmp")  # the finished directory gets the usual permissions
    try:
        sources = [file_identity(p) for p in source_files(corpus)]
        if tokenizers is None:
            log.info("training tokenizers on %s", corpus.path or corpus.src)
            pairs = ((ex.src, ex.tgt) for ex in iter_examples(*corpus.files(), fmt=corpus.format))
            tokenizers = train_tokenizers_on_pairs(cfg.tokenizer, pairs, cfg.training.seed, workdir=tmp)
        src_tok, tgt_tok = tokenizers
        save_tokenizers(tmp, src_tok, tgt_tok)
        log.info("encoding %s into %s", corpus.path or corpus.src, out)
        split = _write_split(tmp, "train", corpus, cfg.data, src_tok, tgt_tok)
        from .. import __version__

        header = {
            "seq2seqkit": KIND, "format": FORMAT, "written_by": __version__,
            "tokenizers": {"src": src_tok.fingerprint(), "tgt": tgt_tok.fingerprint(),
                           "config": cfg.tokenizer.model_dump(mode="json"), "seed": cfg.training.seed},
            "filters": {k: getattr(cfg.data, k) for k in FILTERS},
            "splits": {"train": {"sources": sources, **split}},
        }
        atomic_write_text(tmp / HEADER, json.dumps(header, indent=1) + "\n")
        _fsync_tree(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return header


def preprocess(cfg: Config, out_dir: str | Path) -> dict[str, Any]:
    """``s2s preprocess``: write the shards and tokenizers of ``cfg``'s training data to
    ``out_dir``, which must be missing, empty, or a shards directory this toolkit wrote (then
    replaced) holding nothing else."""
    _require_rereadable(cfg.data.train)
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise UserError(f"{out}: exists and is not a directory; choose another OUT_DIR")
        if any(out.iterdir()) and not (is_shards_dir(out) and _only_ours(out)):
            raise UserError(f"{out}: exists, is not empty and is not a shards directory written by "
                            f"'s2s preprocess' (alone); will not replace it: choose another OUT_DIR")
    if not cfg.data.train.is_set:
        raise UserError("data.train: no training data to preprocess (set data.train.src and data.train.tgt, "
                        "data.train.path, or data.dataset)")
    return write_shards(cfg, out)


# ----------------------------------------------------------------------------- reading
class _SideReader:
    """One side of one split on disk: the lengths in memory, the ids read pair by pair."""

    def __init__(self, directory: Path, split: str, side: str, entry: dict[str, Any], pairs: int,
                 max_len: int, vocab_size: int) -> None:
        self.ids_path, self.off_path = directory / f"{split}.{side}.ids", directory / f"{split}.{side}.off"
        self.dtype = np.dtype(entry["dtype"])
        if self.dtype.kind != "u":
            raise ValueError(f"ids of type {self.dtype.name}, not an unsigned integer type")
        tokens = int(entry["tokens"])
        for path, size in ((self.ids_path, tokens * self.dtype.itemsize), (self.off_path, (pairs + 1) * 8)):
            found = path.stat().st_size if path.is_file() else None
            if found is None:
                raise _Damaged(path, "missing")
            if found != size:
                raise _Damaged(path, f"{found} bytes where the header says {size} (truncated or overwritten)")
        self.lens = self._lengths(pairs, tokens, max_len)
        self._check_ids(tokens, vocab_size)
        self.ids_fd = os.open(self.ids_path, os.O_RDONLY | os.O_CLOEXEC)
        self.off_fd = os.open(self.off_path, os.O_RDONLY | os.O_CLOEXEC)

    def _lengths(self, pairs: int, tokens: int, max_len: int) -> np.ndarray:
        """The length of every pair's side, from the offsets read in chunks, which are checked
        to rise from 0 to the number of tokens by steps of at most ``max_len``."""
        lens = np.empty(pairs, dtype=unsigned_dtype(max_len + 1))  # + 1: batching adds EOS/BOS to each length
        with open(self.off_path, "rb") as f:
            prev = int(np.fromfile(f, dtype=np.int64, count=1)[0])
            if prev != 0:
                raise _Damaged(self.off_path, f"the first offset is {prev}, not 0")
            for start in range(0, pairs, CHUNK):
                chunk = np.fromfile(f, dtype=np.int64, count=min(CHUNK, pairs - start))
                steps = np.diff(chunk, prepend=prev)
                if (steps < 0).any() or (steps > max_len).any():
                    bad = start + int(np.flatnonzero((steps < 0) | (steps > max_len))[0])
                    raise _Damaged(self.off_path, f"pair {bad} has length {int(steps[bad - start])} (not in 0..{max_len})")
                lens[start: start + len(chunk)] = steps
                prev = int(chunk[-1])
        if prev != tokens:
            raise _Damaged(self.off_path, f"the last offset is {prev}, not the {tokens} tokens of the header")
        return lens

    def _check_ids(self, tokens: int, vocab_size: int) -> None:
        with open(self.ids_path, "rb") as f:
            for start in range(0, tokens, CHUNK):
                chunk = np.fromfile(f, dtype=self.dtype, count=min(CHUNK, tokens - start))
                if len(chunk) and int(chunk.max()) >= vocab_size:
                    raise _Damaged(self.ids_path, f"holds id {int(chunk.max())}, beyond the vocabulary of {vocab_size}")

    def read(self, i: int) -> np.ndarray:
        a, b = np.frombuffer(os.pread(self.off_fd, 16, 8 * int(i)), dtype=np.int64)
        size = int(b - a) * self.dtype.itemsize
        data = os.pread(self.ids_fd, size, int(a) * self.dtype.itemsize)
        if len(data) != size:
            raise UserError(f"{self.ids_path}: shorter than its offsets say (changed while training?)")
        return np.frombuffer(data, dtype=self.dtype)

    def close(self) -> None:
        for fd in (self.ids_fd, self.off_fd):
            os.close(fd)
        self.ids_fd = self.off_fd = -1

    def __del__(self) -> None:
        if getattr(self, "ids_fd", -1) >= 0:
            self.close()


class ShardCorpus:
    """A split on disk, offering what :class:`~seq2seqkit.data.dataset.EncodedCorpus` offers to
    batching and collating (``len``, ``src_lens``, ``tgt_lens``, ``src(i)``, ``tgt(i)``)."""

    def __init__(self, directory: Path, header: dict[str, Any], split: str, vocab_sizes: tuple[int, int]) -> None:
        self.directory = directory
        entry = header["splits"][split]
        self.pairs = int(entry["pairs"])
        limits = (header["filters"]["max_src_len"], header["filters"]["max_tgt_len"])
        self._sides = [_SideReader(directory, split, side, entry[side], self.pairs, int(limit), vocab)
                       for side, limit, vocab in zip(SIDES, limits, vocab_sizes)]

    def __len__(self) -> int:
        return self.pairs

    @property
    def src_lens(self) -> np.ndarray:
        return self._sides[0].lens

    @property
    def tgt_lens(self) -> np.ndarray:
        return self._sides[1].lens

    def src(self, i: int) -> np.ndarray:
        return self._sides[0].read(i)

    def tgt(self, i: int) -> np.ndarray:
        return self._sides[1].read(i)


class _Damaged(Exception):
    """A file of a shards directory is not what its header says."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


def read_header(directory: Path) -> dict[str, Any]:
    """The header of a shards directory; every problem with it is one UserError naming the file."""
    path = directory / HEADER
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory of shards (write one with 's2s preprocess CONFIG {directory}')")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {directory} is not a complete directory written by 's2s preprocess'") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: damaged header ({e})") from None
    if not isinstance(header, dict) or header.get("seq2seqkit") != KIND:
        raise UserError(f"{path}: not a shards header written by seq2seq-kit")
    if header.get("format") != FORMAT:
        raise UserError(f"{path}: format version {header.get('format')!r}, but this seq2seq-kit reads version "
                        f"{FORMAT}: write the shards again with 's2s preprocess'")
    return header


def open_shards(directory: Path) -> tuple[Tokenizer, Tokenizer, ShardCorpus, dict[str, Any]]:
    """The tokenizers, the training split and the header of a shards directory, every file
    checked against the header (sizes, offsets, ids within the vocabulary, tokenizer
    fingerprints); any problem is one UserError naming the file and what is wrong."""
    header = read_header(directory)
    try:
        src_tok, tgt_tok = load_tokenizers(directory)
        for side, tok in zip(SIDES, (src_tok, tgt_tok)):
            if tok.fingerprint() != header["tokenizers"][side]:
                raise _Damaged(directory / MANIFEST, f"the {side} tokenizer is not the one the shards were written with")
        corpus = ShardCorpus(directory, header, "train", (src_tok.vocab_size, tgt_tok.vocab_size))
    except _Damaged as e:
        raise UserError(str(e)) from None
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise UserError(f"{directory / HEADER}: damaged header ({type(e).__name__}: {e})") from None
    return src_tok, tgt_tok, corpus, header


def _disagreement(cfg: Config, header: dict[str, Any]) -> str | None:
    """The first setting of ``cfg`` that the shards were not made with, or None."""
    made = header["tokenizers"]["config"]
    for key, value in cfg.tokenizer.model_dump(mode="json").items():
        for sub, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            was = made.get(key, {}).get(sub) if sub else made.get(key)
            if was != v:
                name = f"tokenizer.{key}" + (f".{sub}" if sub else "")
                return f"were tokenized with {name}={was}, but the config says {v}"
    for key in FILTERS:
        if header["filters"][key] != getattr(cfg.data, key):
            return f"were filtered with data.{key}={header['filters'][key]}, but the config says {getattr(cfg.data, key)}"
    recorded = [s["path"] for s in header["splits"]["train"]["sources"]]
    if cfg.data.train.is_set and [str(p) for p in source_files(cfg.data.train)] != recorded:
        return f"were made from {' + '.join(recorded)}, but data.train names {' + '.join(map(str, source_files(cfg.data.train)))}"
    return None


def _same_tokenizers(given: tuple[Tokenizer, Tokenizer] | None, header: dict[str, Any]) -> bool:
    return given is None or all(t.fingerprint() == header["tokenizers"][s] for s, t in zip(SIDES, given))


def open_preprocessed(cfg: Config, tokenizers: tuple[Tokenizer, Tokenizer] | None) -> tuple[Tokenizer, Tokenizer, ShardCorpus]:
    """The shards named by ``data.preprocessed``, refused in one line where they do not fit the
    config, their source files have changed, or (``tokenizers`` given: a resumed run) they were
    not encoded with the run's tokenizers."""
    directory = Path(cfg.data.preprocessed or "")
    src_tok, tgt_tok, corpus, header = open_shards(directory)
    where = f"data.preprocessed: {directory}"
    try:
        differs = _disagreement(cfg, header)
        if differs:
            raise UserError(f"{where}: the shards {differs}; run 's2s preprocess' again or change the config")
        for source in header["splits"]["train"]["sources"]:
            change = source_change(source)
            if change and Path(source["path"]).exists():
                raise UserError(f"{where}: stale: {change}; run 's2s preprocess' again")
            if change:
                log.warning("%s: %s; training on the shards made from it", where, change)
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{directory / HEADER}: damaged header ({type(e).__name__}: {e})") from None
    if not _same_tokenizers(tokenizers, header):
        raise UserError(f"{where}: its tokenizers are not those of this model directory (preprocessed again since?)")
    log.info("training data: %s pairs read from %s (tokenization skipped)", f"{len(corpus):,}", directory)
    return (src_tok, tgt_tok, corpus) if tokenizers is None else (*tokenizers, corpus)


def open_cached(cfg: Config, tokenizers: tuple[Tokenizer, Tokenizer] | None) -> tuple[Tokenizer, Tokenizer, ShardCorpus]:
    """The shards of ``cfg``'s training data in the cache, written now if missing, stale,
    damaged or (``tokenizers`` given: a resumed run) encoded with other tokenizers."""
    entry = cache_root() / cache_key(cfg)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with _locked(entry.parent / f"{entry.name}.lock"):
            why = "not cached yet"
            if entry.exists():
                try:
                    src_tok, tgt_tok, corpus, header = open_shards(entry)
                    change = next(filter(None, map(source_change, header["splits"]["train"]["sources"])), None)
                    why = change or ("" if _same_tokenizers(tokenizers, header) else "encoded with other tokenizers")
                except UserError as e:
                    why = f"damaged ({e})"
                if not why:
                    os.utime(entry / HEADER)  # last used: what `s2s cache clear --older-than` goes by
                    log.info("training data: %s pairs read from the cache %s (tokenization skipped)",
                             f"{len(corpus):,}", entry)
                    return (src_tok, tgt_tok, corpus) if tokenizers is None else (*tokenizers, corpus)
                log.info("cache %s: %s; tokenizing again", entry, why)
            write_shards(cfg, entry, tokenizers)
            src_tok, tgt_tok, corpus, _ = open_shards(entry)
    except OSError as e:
        raise UserError(f"{e.filename or entry}: {e.strerror}: the data cache cannot be written (set S2S_CACHE_DIR "
                        f"to a writable directory, or data.cache=false)") from None
    size = sum(p.stat().st_size for p in entry.iterdir())
    log.info("training data: %s pairs cached in %s (%.1f MB); later runs with the same data and tokenizer "
             "settings read them", f"{len(corpus):,}", entry, size / 1e6)
    return (src_tok, tgt_tok, corpus) if tokenizers is None else (*tokenizers, corpus)


# ------------------------------------------------------------------------ the cache's upkeep
@dataclass
class CacheEntry:
    """One cached tokenized training split (``s2s cache list``)."""

    path: Path
    size: int  # bytes
    pairs: int | None  # None: damaged header
    sources: list[str]  # the training files it was made from
    last_used: float  # when a run last wrote or read it (its header's modification time)
    stale: str | None  # why it no longer matches its sources (a run would tokenize again), or None


def cache_entries(check_sources: bool = True) -> list[CacheEntry]:
    """The entries of the shards cache, least recently used first; ``check_sources`` False
    leaves ``stale`` None instead of comparing every entry's training files (which may hash
    them: only ``list`` and ``clear --stale`` need it)."""
    root, entries = cache_root(), []
    for d in (root.parent, root):  # a file where the cache should be: say so, not "0 entries"
        if d.exists() and not d.is_dir():
            raise UserError(f"{d}: is a file, where the shards cache should be a directory "
                            "(set S2S_CACHE_DIR to a directory)")
    if not root.is_dir():
        return entries
    for d in root.iterdir():
        if not d.is_dir() or not is_shards_dir(d):
            continue
        size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        try:
            train = json.loads((d / HEADER).read_text(encoding="utf-8"))["splits"]["train"]
            pairs, recorded = int(train["pairs"]), list(train["sources"])
            stale = next(filter(None, map(source_change, recorded)), None) if check_sources else None
            sources = [str(r["path"]) for r in recorded]
        except (OSError, ValueError, KeyError, TypeError):
            pairs, sources, stale = None, [], "damaged header"
        entries.append(CacheEntry(d, size, pairs, sources, (d / HEADER).stat().st_mtime, stale))
    return sorted(entries, key=lambda e: e.last_used)


def remove_cache_entry(entry: Path) -> bool:
    """Delete one cache entry and its lock file; False (nothing deleted) while a run holds its
    lock, i.e. is writing or opening it. A run already training on it keeps its open files
    (memory-mapped: the kernel keeps them until the run ends). An entry holding files this
    module does not write is refused."""
    if not is_shards_dir(entry):
        raise UserError(f"{entry}: not a shards directory written by seq2seq-kit; will not delete it")
    if not _only_ours(entry):
        raise UserError(f"{entry}: holds files seq2seq-kit did not write; will not delete it")
    lock = entry.parent / f"{entry.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        _remove_stale_builds(entry)  # a build of it that a killed run left behind
        shutil.rmtree(entry)
        lock.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def training_data(cfg: Config, tokenizers: tuple[Tokenizer, Tokenizer] | None = None
                  ) -> tuple[Tokenizer, Tokenizer, EncodedCorpus | ShardCorpus]:
    """The tokenizers and the encoded training split of a run: from ``data.preprocessed``,
    from the cache (``data.cache``), or encoded into memory. ``tokenizers`` are a resumed run's
    own (never replaced); without them they are read with the shards or trained, in one pass
    over the corpus, and the corpus is encoded in a second (never three reads)."""
    _require_rereadable(cfg.data.train)
    if cfg.data.preprocessed:
        return open_preprocessed(cfg, tokenizers)
    if cfg.data.cache:
        return open_cached(cfg, tokenizers)
    corpus = cfg.data.train
    if tokenizers is None:
        log.info("training tokenizers on %s", corpus.path or corpus.src)
        pairs = ((ex.src, ex.tgt) for ex in iter_examples(*corpus.files(), fmt=corpus.format))
        tokenizers = train_tokenizers_on_pairs(cfg.tokenizer, pairs, cfg.training.seed)
    return (*tokenizers, encode_corpus(corpus, cfg.data, *tokenizers, "train"))
