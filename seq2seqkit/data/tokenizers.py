"""Tokenizers: text <-> token ids, one per side, saved inside the model directory.

Three kinds: SentencePiece (unigram or BPE, trained on the training data), characters, and
whitespace-separated words. All share the same special ids so that models and search never
need to know which kind produced the ids.

Line breaks are kept as a reserved piece, ``<sep>`` (id 4 in every kind: a SentencePiece
user-defined symbol, a reserved vocabulary entry for characters and words), so the turns of a
multi-line dialogue stay visible to the model. Every tokenizer maps the same way, wherever the
text comes from (a JSONL corpus, ``s2s generate``, the Python API): a run of line breaks
(``\n``, ``\r\n``, ``\r``, U+2028, U+2029) with the blanks around it, or the literal text ``<sep>``, is
one ``<sep>``; line breaks at the very start or end of a text are dropped; each line is then cut
as a text of its own (so a speaker's name opening a turn is the same piece as elsewhere).
``decode`` turns ``<sep>`` back into ``\n``. Tokenizers saved before ``<sep>`` existed have no
such piece and keep reading line breaks as spaces.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tempfile
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from ..config import TokenizerConfig, TokenizersConfig
from ..errors import UserError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
SEP = "<sep>"  # a line break (a dialogue's turn boundary); id 4, right after SPECIALS
RESERVED = (*SPECIALS, SEP)  # what every new vocabulary starts with
SPACE = "\u2581"  # how a space is spelled in a character vocabulary (as SentencePiece does)
_BREAKS = re.compile(r"\s*(?:(?:\r\n|[\n\r\u2028\u2029]|<sep>)\s*)+")


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` as the tokenizers see them: split at every run of line breaks (or
    literal ``<sep>``), blanks around a break dropped, no empty first or last line from a break
    at the start or the end (``"A: hi \\r\\nB: yo\\n"`` -> ``["A: hi", "B: yo"]``)."""
    lines = _BREAKS.split(text)
    if len(lines) > 1 and not lines[0].strip():
        lines = lines[1:]
    if len(lines) > 1 and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _segments(ids: Sequence[int], sep: int | None) -> list[list[int]]:
    """``ids`` cut at every ``sep`` (one segment when ``sep`` is None)."""
    out: list[list[int]] = [[]]
    for i in ids:
        if i == sep:
            out.append([])
        else:
            out[-1].append(int(i))
    return out


class Tokenizer(ABC):
    """Maps text to ids and back. ``encode`` never adds BOS/EOS: the model code does."""

    kind: str

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def id_to_piece(self, idx: int) -> str: ...

    def pieces(self, text: str) -> list[str]:
        """The tokens as strings (for attention plots and length statistics)."""
        return [self.id_to_piece(i) for i in self.encode(text)]

    @property
    @abstractmethod
    def sep_id(self) -> int | None:
        """The id of ``<sep>``; None for a tokenizer saved before it existed."""

    def lines(self, text: str) -> list[str]:
        """What is encoded line by line, ``<sep>`` between (the whole text where there is no ``<sep>``)."""
        return split_lines(text) if self.sep_id is not None else [text]

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for n, ids in enumerate(self.encode_lines(self.lines(text))):
            if n:
                out.append(self.sep_id)  # type: ignore[arg-type]
            out += ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return "\n".join(self.decode_line(seg) for seg in _segments(ids, self.sep_id))

    @abstractmethod
    def encode_lines(self, lines: list[str]) -> list[list[int]]:
        """Each line (holding no line break) as ids."""

    @abstractmethod
    def decode_line(self, ids: Sequence[int]) -> str:
        """Ids holding no ``<sep>`` as text."""

    @abstractmethod
    def save(self, directory: Path, name: str) -> dict: ...

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash of everything that decides the ids (kind, settings, vocabulary or model):
        two tokenizers with the same fingerprint encode every text the same way."""


class VocabTokenizer(Tokenizer):
    """Character or word tokens looked up in a vocabulary counted on the training data."""

    def __init__(self, kind: str, itos: list[str], lowercase: bool = False) -> None:
        if kind not in ("char", "word"):
            raise ValueError(kind)
        self.kind = kind
        self.itos = itos
        self.stoi = {s: i for i, s in enumerate(itos)}
        self.lowercase = lowercase
        self._sep = self.stoi.get(SEP)

    @property
    def sep_id(self) -> int | None:
        return self._sep

    def split(self, text: str) -> list[str]:
        """The tokens of one line."""
        if self.lowercase:
            text = text.lower()
        if self.kind == "word":
            return text.split()
        return [SPACE if c == " " else c for c in " ".join(text.split())]

    @classmethod
    def train(cls, cfg: TokenizerConfig, texts: Iterable[str]) -> VocabTokenizer:
        probe = cls(cfg.kind, list(RESERVED), cfg.lowercase)
        counts: Counter[str] = Counter()
        for text in texts:
            for line in probe.lines(text):
                counts.update(probe.split(line))
        # Most frequent first, ties broken by the token itself: deterministic across runs.
        ranked = sorted((t for t, c in counts.items() if c >= cfg.min_freq and t not in RESERVED),
                        key=lambda t: (-counts[t], t))
        if cfg.max_vocab is not None:
            ranked = ranked[: max(cfg.max_vocab - len(RESERVED), 0)]
        return cls(cfg.kind, list(RESERVED) + ranked, cfg.lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode_lines(self, lines: list[str]) -> list[list[int]]:
        return [[self.stoi.get(t, UNK) for t in self.split(line)] for line in lines]

    def decode_line(self, ids: Sequence[int]) -> str:
        toks = [self.itos[i] for i in ids if i >= len(SPECIALS) or i == UNK]
        if self.kind == "word":
            return " ".join(toks)
        return "".join(toks).replace(SPACE, " ")

    def id_to_piece(self, idx: int) -> str:
        return self.itos[idx]

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.kind, self.lowercase, self.itos]).encode("utf-8")).hexdigest()

    def save(self, directory: Path, name: str) -> dict:
        vocab_file = f"{name}.vocab.json"
        (directory / vocab_file).write_text(json.dumps(self.itos, ensure_ascii=False), encoding="utf-8")
        return {"kind": self.kind, "vocab": vocab_file, "lowercase": self.lowercase}


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, lowercase: bool = False) -> None:
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.lowercase = lowercase
        sep = self.sp.piece_to_id(SEP)
        self._sep = None if sep == UNK else sep

    @property
    def sep_id(self) -> int | None:
        return self._sep

    @classmethod
    def train(cls, cfg: TokenizerConfig, texts: Iterable[str], seed: int = 0) -> SentencePieceTokenizer:
        def sentences() -> Iterator[str]:  # line by line, as encode cuts them
            for t in texts:
                for line in split_lines(t):
                    if line.strip():
                        yield line.lower() if cfg.lowercase else line

        buf = io.BytesIO()
        # TrainerSpec has no random_seed field: the seed is process-global in sentencepiece,
        # an unsigned 32-bit value where 0xFFFFFFFF means "unset".
        spm.set_random_generator_seed(seed % 0xFFFFFFFF)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(),
                model_writer=buf,
                model_type=cfg.model_type,
                vocab_size=cfg.vocab_size,
                character_coverage=cfg.character_coverage,
                pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
                pad_piece=SPECIALS[0], unk_piece=SPECIALS[1], bos_piece=SPECIALS[2], eos_piece=SPECIALS[3],
                user_defined_symbols=[SEP],  # id 4, right after the control symbols
                input_sentence_size=2_000_000, shuffle_input_sentence=True,
                num_threads=1,  # one thread: the same model on every run
                minloglevel=2,
                hard_vocab_limit=False,  # a small corpus may not support the requested size
            )
        except RuntimeError as e:
            raise UserError(f"SentencePiece training failed: {e}") from None
        return cls(buf.getvalue(), cfg.lowercase)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode_lines(self, lines: list[str]) -> list[list[int]]:
        # One call per line: a call with a list starts SentencePiece's thread pool, ~0.4 ms each
        # time, where a short line encodes in ~15 us (the same ids; 30x faster for a corpus).
        return [self.sp.encode(line.lower() if self.lowercase else line) for line in lines]

    def decode_line(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, idx: int) -> str:
        return self.sp.id_to_piece(int(idx))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.kind, self.lowercase]).encode("utf-8") + self.proto).hexdigest()

    def save(self, directory: Path, name: str) -> dict:
        model_file = f"{name}.spm.model"
        (directory / model_file).write_bytes(self.proto)
        return {"kind": self.kind, "model": model_file, "lowercase": self.lowercase}


def train_tokenizers(
    cfg: TokenizersConfig, src_texts: Iterable[str], tgt_texts: Iterable[str], seed: int = 0
) -> tuple[Tokenizer, Tokenizer]:
    """Train both sides; ``joint`` trains one tokenizer on source and target text together."""

    def one(c: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
        if c.kind == "sentencepiece":
            return SentencePieceTokenizer.train(c, texts, seed)
        return VocabTokenizer.train(c, texts)

    if cfg.joint:
        def both() -> Iterator[str]:
            yield from src_texts
            yield from tgt_texts

        tok = one(cfg.src, both())
        return tok, tok
    return one(cfg.src, src_texts), one(cfg.tgt, tgt_texts)


def train_tokenizers_on_pairs(
    cfg: TokenizersConfig, pairs: Iterable[tuple[str, str]], seed: int = 0, workdir: str | Path | None = None
) -> tuple[Tokenizer, Tokenizer]:
    """:func:`train_tokenizers` on the two sides of ``pairs``, read in one pass: each side's texts
    are spooled to a temporary file (one JSON string a line, so line breaks inside a text
    survive) and read back from there, so the corpus itself (decompressed, parsed, checked) is
    read once, memory stays flat, and the tokenizers are exactly those of ``train_tokenizers``
    on the same texts. SentencePiece keeps at most ``input_sentence_size`` sentences of them (a
    seeded random sample where there are more); char/word vocabularies only keep counts. The
    spool lives in ``workdir`` (default: the system's temporary directory) and is removed."""
    with tempfile.TemporaryDirectory(prefix="s2s-tokenizer-texts-", dir=workdir) as tmp:
        files = [Path(tmp) / "src.jsonl", Path(tmp) / "tgt.jsonl"]
        with files[0].open("w", encoding="utf-8") as fs, files[1].open("w", encoding="utf-8") as ft:
            for src, tgt in pairs:
                fs.write(json.dumps(src) + "\n")
                ft.write(json.dumps(tgt) + "\n")

        def texts(path: Path) -> Iterator[str]:
            with path.open(encoding="utf-8", newline="\n") as f:
                for line in f:
                    yield json.loads(line)

        return train_tokenizers(cfg, texts(files[0]), texts(files[1]), seed)


MANIFEST = "tokenizers.json"


def save_tokenizers(directory: str | Path, src: Tokenizer, tgt: Tokenizer) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"src": src.save(directory, "src")}
    meta["tgt"] = meta["src"] if tgt is src else tgt.save(directory, "tgt")
    meta["joint"] = tgt is src
    (directory / MANIFEST).write_text(json.dumps(meta, indent=2), encoding="utf-8")


MAX_TOKENIZER_BYTES = 256 * 2**20  # a million-entry vocabulary is about 20 MB


def _read(path: Path, limit: int | None = None) -> bytes:
    """A tokenizer file of a model directory, read to a limit: one linked to ``/dev/zero`` or
    replaced by a huge file filled memory until a MemoryError traceback (or the OOM killer)."""
    limit = MAX_TOKENIZER_BYTES if limit is None else limit
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path}: not a regular file; a model directory's tokenizer files are files this toolkit wrote")
        if info.st_size > limit:
            raise UserError(f"{path}: over {limit // 2**20} MiB: not a tokenizer file this toolkit wrote")
        # read(n) allocates n bytes before it reads: ask for what the file holds (and one more, to
        # see a file that grew meanwhile), not for the limit
        data = f.read(info.st_size + 1)
    if len(data) > limit:
        raise UserError(f"{path}: over {limit // 2**20} MiB: not a tokenizer file this toolkit wrote")
    return data


def _load_one(directory: Path, meta: dict) -> Tokenizer:
    if meta["kind"] == "sentencepiece":
        return SentencePieceTokenizer(_read(directory / meta["model"]), meta.get("lowercase", False))
    path = directory / meta["vocab"]
    itos = json.loads(_read(path).decode("utf-8"))
    _check_vocabulary(path, itos)
    return VocabTokenizer(meta["kind"], itos, meta.get("lowercase", False))


def _check_vocabulary(path: Path, itos: object) -> None:
    """A vocabulary file as :meth:`VocabTokenizer.save` writes it: a list of distinct strings that
    starts with the special tokens. An edited one (``[]``, numbers, a repeated token) built a
    model with no rows and failed with an IndexError traceback, or decoded ids to the wrong tokens."""
    if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
        raise UserError(f"{path}: not a vocabulary this toolkit wrote (expected a JSON list of tokens)")
    if tuple(itos[: len(SPECIALS)]) != SPECIALS:
        raise UserError(f"{path}: not a vocabulary this toolkit wrote (it must start with {', '.join(SPECIALS)})")
    seen: set[str] = set()
    for i, token in enumerate(itos):
        if token in seen:
            raise UserError(f"{path}: entry {i} repeats the token {token!r}: a damaged vocabulary (each token once)")
        seen.add(token)


def load_tokenizers(directory: str | Path) -> tuple[Tokenizer, Tokenizer]:
    directory = Path(directory)
    try:
        meta = json.loads(_read(directory / MANIFEST, 2**20).decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{directory}: no {MANIFEST}; is this a model directory?") from None
    except ValueError as e:  # not UTF-8, not JSON
        raise UserError(f"{directory / MANIFEST}: damaged ({e})") from None
    try:
        src = _load_one(directory, meta["src"])
        tgt = src if meta.get("joint") else _load_one(directory, meta["tgt"])
    except FileNotFoundError as e:
        raise UserError(f"{e.filename}: missing from the model directory (named in {MANIFEST})") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as e:  # a manifest or vocabulary of another shape, a bad model
        raise UserError(f"{directory}: its tokenizers cannot be loaded ({type(e).__name__}: {e}); "
                        f"is this a model directory this toolkit wrote?") from None
    return src, tgt
