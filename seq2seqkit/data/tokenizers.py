"""Tokenizers: text <-> token ids, one per side, saved inside the model directory.

Three kinds: SentencePiece (unigram or BPE, trained on the training data), characters, and
whitespace-separated words. All share the same special ids so that models and search never
need to know which kind produced the ids.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from ..config import TokenizerConfig, TokenizersConfig
from ..errors import UserError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
SPACE = "\u2581"  # how a space is spelled in a character vocabulary (as SentencePiece does)


class Tokenizer(ABC):
    """Maps text to ids and back. ``encode`` never adds BOS/EOS: the model code does."""

    kind: str

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def id_to_piece(self, idx: int) -> str: ...

    def pieces(self, text: str) -> list[str]:
        """The tokens as strings (for attention plots and length statistics)."""
        return [self.id_to_piece(i) for i in self.encode(text)]

    @abstractmethod
    def save(self, directory: Path, name: str) -> dict: ...


class VocabTokenizer(Tokenizer):
    """Character or word tokens looked up in a vocabulary counted on the training data."""

    def __init__(self, kind: str, itos: list[str], lowercase: bool = False) -> None:
        if kind not in ("char", "word"):
            raise ValueError(kind)
        self.kind = kind
        self.itos = itos
        self.stoi = {s: i for i, s in enumerate(itos)}
        self.lowercase = lowercase

    def split(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        if self.kind == "word":
            return text.split()
        return [SPACE if c == " " else c for c in " ".join(text.split())]

    @classmethod
    def train(cls, cfg: TokenizerConfig, texts: Iterable[str]) -> VocabTokenizer:
        probe = cls(cfg.kind, list(SPECIALS), cfg.lowercase)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(probe.split(text))
        # Most frequent first, ties broken by the token itself: deterministic across runs.
        ranked = sorted((t for t, c in counts.items() if c >= cfg.min_freq), key=lambda t: (-counts[t], t))
        if cfg.max_vocab is not None:
            ranked = ranked[: cfg.max_vocab - len(SPECIALS)]
        return cls(cfg.kind, list(SPECIALS) + [t for t in ranked if t not in SPECIALS], cfg.lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(t, UNK) for t in self.split(text)]

    def decode(self, ids: Sequence[int]) -> str:
        toks = [self.itos[i] for i in ids if i >= len(SPECIALS) or i == UNK]
        if self.kind == "word":
            return " ".join(toks)
        return "".join(toks).replace(SPACE, " ")

    def id_to_piece(self, idx: int) -> str:
        return self.itos[idx]

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

    @classmethod
    def train(cls, cfg: TokenizerConfig, texts: Iterable[str], seed: int = 0) -> SentencePieceTokenizer:
        def sentences() -> Iterator[str]:
            for t in texts:
                t = t.lower() if cfg.lowercase else t
                if t.strip():
                    yield t

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

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text.lower() if self.lowercase else text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, idx: int) -> str:
        return self.sp.id_to_piece(int(idx))

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


MANIFEST = "tokenizers.json"


def save_tokenizers(directory: str | Path, src: Tokenizer, tgt: Tokenizer) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"src": src.save(directory, "src")}
    meta["tgt"] = meta["src"] if tgt is src else tgt.save(directory, "tgt")
    meta["joint"] = tgt is src
    (directory / MANIFEST).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _load_one(directory: Path, meta: dict) -> Tokenizer:
    if meta["kind"] == "sentencepiece":
        return SentencePieceTokenizer((directory / meta["model"]).read_bytes(), meta.get("lowercase", False))
    itos = json.loads((directory / meta["vocab"]).read_text(encoding="utf-8"))
    return VocabTokenizer(meta["kind"], itos, meta.get("lowercase", False))


def load_tokenizers(directory: str | Path) -> tuple[Tokenizer, Tokenizer]:
    directory = Path(directory)
    try:
        meta = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
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
