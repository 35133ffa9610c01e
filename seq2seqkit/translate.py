"""Using a trained model: load a model directory, translate text, stream files.

A model directory is self-contained: ``config.yaml``, the tokenizers, and
``checkpoints/{best,last}.pt``. ``seq2seqkit.load(DIR)`` returns a :class:`Translator`.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import check_weights, load_checkpoint, load_weights, tokenizer_stamp
from .config import Config, SearchConfig, load_saved_config
from .data.dataset import pad_sources
from .data.tokenizers import EOS, SPECIALS, Tokenizer, load_tokenizers
from .errors import UserError
from .models import Seq2SeqModel, build_model
from .models.base import check_attention_layer
from .models.ensemble import Ensemble
from .search import Hypothesis, PathDecoder, path_decoder, search

log = logging.getLogger("seq2seqkit")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device(name)


# Told about each input over the length limit: (its index in the call, its length in tokens, the limit).
LongInputHook = Callable[[int, int, int], None]


def input_limit(cfg: SearchConfig, max_positions: int | None) -> int:
    """The most source tokens (EOS not counted) an input may have: ``cfg.max_input_tokens``,
    and what a model whose positions stop at ``max_positions`` (EOS included) can encode."""
    return cfg.max_input_tokens if max_positions is None else min(cfg.max_input_tokens, max_positions - 1)


def with_training_cap(cfg: Config) -> Config:
    """A model trained with ``data.truncate_src`` saw its sources cut to ``data.max_src_len``
    tokens; it reads its inputs the same way through the one input limit of search:
    ``search.max_input_tokens`` lowered to that length (``--max-input-tokens`` may raise it)."""
    if cfg.data.truncate_src and cfg.search.max_input_tokens > cfg.data.max_src_len:
        cfg.search = cfg.search.model_copy(update={"max_input_tokens": cfg.data.max_src_len})
    return cfg


def limit_inputs(sources: Sequence[Sequence[int]], limit: int, cfg: SearchConfig,
                 on_long_input: LongInputHook | None = None) -> dict[int, Sequence[int]]:
    """The inputs to decode by index: those over ``limit`` tokens cut to it, or left out with
    ``cfg.on_long_input: refuse``; ``on_long_input`` (default: a logged warning) is told of each."""
    kept: dict[int, Sequence[int]] = {}
    for i, ids in enumerate(sources):
        if len(ids) > limit:
            if on_long_input is not None:
                on_long_input(i, len(ids), limit)
            else:
                action = f"truncated to {limit}" if cfg.on_long_input == "truncate" else "refused (empty output)"
                log.warning("input %d: %d tokens, over the limit of %d (search.max_input_tokens, or the model's "
                            "max_positions): %s", i + 1, len(ids), limit, action)
            if cfg.on_long_input == "refuse":
                continue
            ids = ids[:limit]
        kept[i] = ids
    return kept


def refused() -> list[Hypothesis]:
    """The n-best list of an input that was not translated: one empty output of score -inf."""
    return [Hypothesis([], -math.inf)]


class Engine(ABC):
    """What runs the search on batches of source ids: the PyTorch model (one, or an ensemble)
    in :class:`TorchEngine`, or an exported model in CTranslate2
    (:class:`~seq2seqkit.ct2.CTranslate2Engine`). A :class:`Translator` holds one and does the
    rest alike for all: tokenizing, the input limit, length-sorted batches, detokenizing."""

    name: str  # "torch", "ctranslate2"
    model: Seq2SeqModel | None = None  # the PyTorch model, where the engine runs one
    device: torch.device = torch.device("cpu")

    @property
    @abstractmethod
    def max_positions(self) -> int | None:
        """The longest source (EOS included) the engine can encode; None: no cap."""

    @property
    @abstractmethod
    def attention_layers(self) -> int:
        """How many attentions over the source the engine can return weights of (0: none)."""

    @abstractmethod
    def num_parameters(self) -> int:
        """How many weights the model has."""

    @abstractmethod
    def decode(self, sources: Sequence[Sequence[int]], cfg: SearchConfig,
               attention_layer: int | None = None) -> list[list[Hypothesis]]:
        """One batch (inputs already within :func:`input_limit`): each input's n-best list, best first."""

    def placement(self) -> str:
        """Where it runs, for ``repr`` (the PyTorch engine, the default, goes unnamed)."""
        return f"device={self.device}"

    def path_decoder(self, cfg: SearchConfig, attention_layer: int | None = None) -> PathDecoder | None:
        """An empty step-level decoder for ``cfg``'s search (inputs join and leave between
        steps: :class:`~seq2seqkit.search.PathDecoder`), where the engine has one; None: it
        decodes whole batches only (:meth:`decode`)."""
        return None


class TorchEngine(Engine):
    """Search (:func:`~seq2seqkit.search.search`) on a PyTorch model, padded batches on ``device``."""

    name = "torch"

    def __init__(self, model: Seq2SeqModel, device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device

    @property
    def max_positions(self) -> int | None:
        return self.model.max_positions

    @property
    def attention_layers(self) -> int:
        return self.model.attention_layers

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    @torch.no_grad()
    def decode(self, sources: Sequence[Sequence[int]], cfg: SearchConfig,
               attention_layer: int | None = None) -> list[list[Hypothesis]]:
        self.model.eval()
        src, lens = pad_sources(sources)
        return search(self.model, src.to(self.device), lens.to(self.device), cfg, attention_layer=attention_layer)

    def path_decoder(self, cfg: SearchConfig, attention_layer: int | None = None) -> PathDecoder | None:
        self.model.eval()
        return path_decoder(self.model, cfg, attention_layer=attention_layer)  # None for beam search


def decode_nbest(engine: Engine, sources: Sequence[Sequence[int]], cfg: SearchConfig, progress: str | None = None,
                 attention_layer: int | None = None, on_long_input: LongInputHook | None = None) -> list[list[Hypothesis]]:
    """Decode id sequences as ``cfg`` says (greedy, beam or sampling) in length-sorted batches
    (little padding; :func:`decoding_batches`); returns each input's n-best list, best first, in
    input order. ``progress``: the label of a progress bar over the batches (on a terminal only).

    Inputs over :func:`input_limit` are handled by :func:`limit_inputs`; a refused one gets
    :func:`refused`. ``attention_layer``: see :func:`~seq2seqkit.search.search`."""
    kept = limit_inputs(sources, input_limit(cfg, engine.max_positions), cfg, on_long_input)
    out = [refused() for _ in sources]
    order = sorted(kept, key=lambda i: len(kept[i]))
    for idx in tqdm(decoding_batches([len(kept[i]) + 1 for i in order], cfg), desc=progress, unit="batch",
                    dynamic_ncols=True, leave=False, disable=None if progress else True):
        idx = [order[k] for k in idx]
        for i, hyps in zip(idx, engine.decode([kept[i] for i in idx], cfg, attention_layer)):
            out[i] = hyps
    return out


def decoding_batches(lengths: Sequence[int], cfg: SearchConfig) -> list[range]:
    """Consecutive batches of ``lengths`` (sorted, shortest first; EOS counted): at most
    ``cfg.batch_size`` inputs, and at most ``cfg.max_batch_tokens`` padded source tokens times
    the rows search keeps per input (a batch of 64 inputs of 1,000 tokens at beam 256 held 16M
    source positions of encoder states; an input over the budget alone is decoded alone)."""
    rows = max(cfg.beam_size, cfg.nbest if cfg.sample else 1)
    batches, start = [], 0
    while start < len(lengths):
        end = start + 1
        while (end < len(lengths) and end - start < cfg.batch_size
               and (end + 1 - start) * lengths[end] * rows <= cfg.max_batch_tokens):
            end += 1
        batches.append(range(start, end))
        start = end
    return batches


def translate_ids_nbest(
    model: Seq2SeqModel, sources: Sequence[Sequence[int]], cfg: SearchConfig, device: torch.device,
    progress: str | None = None, attention_layer: int | None = None, on_long_input: LongInputHook | None = None,
) -> list[list[Hypothesis]]:
    """:func:`decode_nbest` with a PyTorch model on ``device``."""
    return decode_nbest(TorchEngine(model, device), sources, cfg, progress, attention_layer, on_long_input)


def translate_ids(
    model: Seq2SeqModel, sources: Sequence[Sequence[int]], cfg: SearchConfig, device: torch.device,
    progress: str | None = None,
) -> list[Hypothesis]:
    """The best hypothesis of each input, in input order."""
    return [hyps[0] for hyps in translate_ids_nbest(model, sources, cfg, device, progress)]


def ranking_score(h: Hypothesis) -> float:
    """What an n-best list is ranked by: the length-normalised score where search made one."""
    return h.score if h.norm_score is None else h.norm_score


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two tokenizers give every id the same piece (what an ensemble's members must share)."""
    return a.vocab_size == b.vocab_size and all(a.id_to_piece(i) == b.id_to_piece(i) for i in range(a.vocab_size))


def chunked(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lines in lists of ``size`` (newlines stripped), so memory stays flat on any input size."""
    buf: list[str] = []
    for line in lines:
        buf.append(line.rstrip("\r\n"))
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


class Translator:
    """A trained model with its tokenizers, ready to translate text; ``engine`` runs the search
    (:class:`TorchEngine`: the PyTorch model or an ensemble; CTranslate2's engine for an export)."""

    def __init__(self, engine: Engine, src_tok: Tokenizer, tgt_tok: Tokenizer, cfg: Config):
        self.engine, self.src_tok, self.tgt_tok = engine, src_tok, tgt_tok
        self.cfg = with_training_cap(cfg)
        self.family = cfg.model.family  # an ensemble's lists its members'

    @property
    def model(self) -> Seq2SeqModel | None:
        """The PyTorch model the engine runs (None for CTranslate2); setting one runs that instead."""
        return self.engine.model

    @model.setter
    def model(self, model: Seq2SeqModel) -> None:
        self.engine = TorchEngine(model, self.engine.device)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def __repr__(self) -> str:
        return (f"Translator(family={self.family}, parameters={self.engine.num_parameters():,}, "
                f"{self._vocabularies()}, {self.engine.placement()})")

    def _vocabularies(self) -> str:
        return (f"source vocabulary={self.src_tok.vocab_size} ({self.src_tok.kind}), "
                f"target vocabulary={self.tgt_tok.vocab_size} ({self.tgt_tok.kind})")

    @classmethod
    def load(cls, model_dir: str | Path, checkpoint: str = "best", device: str = "auto", engine: str = "torch",
             compute_type: str = "default") -> Translator:
        """Load ``MODEL_DIR`` (``checkpoint``: best, last, or a path to a .pt file); with ``engine``
        ``"ctranslate2"``, an ``s2s export`` directory decoded by CTranslate2 (``compute_type``:
        int8, float32, ...; its checkpoint was chosen at export)."""
        if engine == "ctranslate2":
            from .ct2 import load_ctranslate2

            return load_ctranslate2(model_dir, device=device, compute_type=compute_type)
        model_dir = Path(model_dir)
        if not (model_dir / "config.yaml").is_file():
            if (model_dir / "config.yaml").exists():
                raise UserError(f"{model_dir / 'config.yaml'}: not a regular file; a model directory's config is a file "
                                f"this toolkit wrote")
            hint = " (a file: an input file goes after -i, or on stdin)" if model_dir.is_file() else ""
            raise UserError(f"{model_dir}: not a model directory (no config.yaml){hint}")
        cfg = load_saved_config(model_dir / "config.yaml")
        src_tok, tgt_tok = load_tokenizers(model_dir)
        # A name (best, last, averaged: checkpoints/NAME.pt) or a path to a file (it has a .pt
        # suffix or a directory part: "/etc/passwd" is that file, not checkpoints/etc/passwd.pt).
        if not checkpoint.strip():
            raise UserError("--checkpoint: empty (best, last, averaged, or a path to a .pt file)")
        bare = Path(checkpoint).name == checkpoint  # no directory part
        named = bare and not checkpoint.endswith(".pt")
        path = model_dir / "checkpoints" / f"{checkpoint}.pt" if named else Path(checkpoint)
        if checkpoint == "best" and not path.exists():
            path = model_dir / "checkpoints" / "last.pt"  # a run stopped before its first validation
        inside = model_dir / "checkpoints" / checkpoint
        if bare and not named and not path.exists() and inside.is_file():
            raise UserError(f"{checkpoint}: no such file here; the model's own is --checkpoint {checkpoint[:-3]} "
                            f"({inside})")
        state = load_checkpoint(path)
        stamp = tokenizer_stamp(src_tok, tgt_tok)
        with torch.device("meta"):  # a config.yaml edited to a huge model is refused before it is allocated
            check_weights(build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size), state, path, tokenizers=stamp)
        model = build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size)
        load_weights(model, state, path, tokenizers=stamp)
        return cls(TorchEngine(model, resolve_device(device)), src_tok, tgt_tok, cfg)

    @classmethod
    def ensemble(cls, model_dirs: Sequence[str | Path], checkpoint: str = "best", device: str = "auto") -> Translator:
        """Load several model directories as one :class:`~seq2seqkit.models.ensemble.Ensemble`
        (any families; same tokenizers). Search and evaluation settings come from the first."""
        if len(model_dirs) == 1:
            return cls.load(model_dirs[0], checkpoint, device)
        return cls.combine([cls.load(d, checkpoint, "cpu") for d in model_dirs], model_dirs, device)

    @classmethod
    def combine(cls, members: Sequence[Translator], names: Sequence[str | Path], device: str = "auto") -> Translator:
        """Loaded translators (``names``: where each came from, for errors) as one ensemble, after
        checking that they share both vocabularies."""
        first = members[0]
        for name, tr in zip(names, members):
            if tr.model is None:
                raise UserError(f"{name}: an ensemble runs PyTorch models; the {tr.engine.name} engine cannot join one")
        for name, tr in zip(names[1:], members[1:]):
            for side, a, b in (("source", first.src_tok, tr.src_tok), ("target", first.tgt_tok, tr.tgt_tok)):
                if not same_vocabulary(a, b):
                    raise UserError(f"{name}: its {side} vocabulary differs from {names[0]}'s: an ensemble "
                                    f"needs models trained with the same tokenizers")
        model = Ensemble([tr.model for tr in members])  # type: ignore[misc]
        combined = cls(TorchEngine(model, resolve_device(device)), first.src_tok, first.tgt_tok, first.cfg)
        combined.family = f"ensemble of {' + '.join(tr.family for tr in members)}"
        return combined

    @property
    def attention_layers(self) -> int:
        """How many attentions over the source the engine returns weights of (0: none)."""
        return self.engine.attention_layers

    def check_attention_layer(self, layer: int) -> None:
        """Refuse (ValueError naming the valid range) an attention the engine does not return."""
        check_attention_layer(self.engine, layer)

    def input_limit(self, cfg: SearchConfig | None = None) -> int:
        """The most source tokens (EOS not counted) an input may have under ``cfg`` (default: the model's)."""
        return input_limit(cfg or self.cfg.search, self.engine.max_positions)

    def decode_ids(self, sources: Sequence[Sequence[int]], cfg: SearchConfig | None = None,
                   attention_layer: int | None = None, on_long_input: LongInputHook | None = None,
                   progress: str | None = None) -> list[list[Hypothesis]]:
        """Each source's n-best list under ``cfg`` (default: the model's search settings)."""
        return decode_nbest(self.engine, sources, cfg or self.cfg.search, progress, attention_layer, on_long_input)

    def hypotheses(self, texts: Sequence[str]) -> list[Hypothesis]:
        return [hyps[0] for hyps in self.nbest_hypotheses(texts)]

    def nbest_hypotheses(self, texts: Sequence[str], attention_layer: int | None = None,
                         on_long_input: LongInputHook | None = None) -> list[list[Hypothesis]]:
        """Each text's n-best list; ``attention_layer``: also keep that attention's weights
        (:attr:`attention_layers` says which exist); ``on_long_input``: see :func:`decode_nbest`."""
        return self.decode_ids([self.src_tok.encode(t) for t in texts], None, attention_layer, on_long_input)

    def attention_pieces(self, text: str, hyp: Hypothesis) -> tuple[list[str], list[str]]:
        """The labels of ``hyp.attention`` (one row per output step, one column per source
        position): the source pieces as decoded (a long input cut) and EOS, and the output
        pieces, with EOS where the output ended with it."""
        assert hyp.attention is not None
        eos = [SPECIALS[EOS]] if hyp.attention.size(0) > len(hyp.tokens) else []
        source = self.src_tok.pieces(text)[: hyp.attention.size(1) - 1]
        return source + [SPECIALS[EOS]], [self.tgt_tok.id_to_piece(t) for t in hyp.tokens] + eos

    def translate(self, texts: str | Sequence[str]) -> list[str]:
        """Translate sentences (one string or a list); returns detokenized outputs."""
        if isinstance(texts, str):
            texts = [texts]
        return [self.tgt_tok.decode(h.tokens) for h in self.hypotheses(texts)]

    def nbest(self, texts: str | Sequence[str]) -> list[list[tuple[str, float]]]:
        """Up to ``cfg.search.nbest`` (output, score) pairs per sentence, best first; the score
        is the length-normalised one beam search ranks by (the log-probability otherwise)."""
        if isinstance(texts, str):
            texts = [texts]
        return [[(self.tgt_tok.decode(h.tokens), ranking_score(h)) for h in hyps] for hyps in self.nbest_hypotheses(texts)]

    def translate_stream(self, lines: Iterable[str], chunk: int = 2000) -> Iterator[str]:
        """Translate a stream of lines chunk by chunk, so memory stays flat on any input size."""
        for buf in chunked(lines, chunk):
            yield from self.translate(buf)
