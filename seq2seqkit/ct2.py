"""CTranslate2 interop: export a trained Transformer for its fast (and int8) C++ inference,
and decode with the export (:class:`CTranslate2Engine` under a Translator, ``--engine ctranslate2``).

The conversion goes through CTranslate2's own converter API: a ``TransformerSpec`` (the
library's description of an encoder-decoder Transformer) is filled with this model's weights,
then ``Converter.convert`` validates it, optionally quantizes it (int8, int16, float16, ...)
and writes ``model.bin``, ``config.json`` and the vocabularies. Our ``config.yaml`` and
tokenizers are copied next to them, so an exported directory is usable on its own:
``s2s translate -m OUT_DIR --engine ctranslate2``.

How our Transformer maps onto the spec:

* q/k/v/out projections -> the spec's fused linears (self-attention: one [q;k;v] matrix;
  cross-attention: q, then one [k;v] matrix), each sublayer's LayerNorm, FFN w1/w2;
* pre-norm's final LayerNorms; post-norm has none (``pre_norm=False``);
* token embeddings times sqrt(d_model) (``scale_embeddings``), plus a position table written
  out explicitly (our sinusoid's frequencies differ from CTranslate2's built-in one, and
  learned positions are a table anyway): position 0 is the first source token and the
  decoder's start token, as in our model;
* the output projection (tied or not; no bias); LayerNorm epsilon 1e-5 (PyTorch's default);
* the source gets ``</s>`` appended (``add_source_eos``), as our batches do.

Only the Transformer family exists in CTranslate2's vocabulary of models: the RNN families
have no spec there, and exporting one is refused with that reason; so is a copy model
(``model.copy_attn``), whose pointer-generator mixture no CTranslate2 spec has.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import Config, SearchConfig, load_saved_config
from .data.tokenizers import BOS, EOS, MANIFEST, PAD, UNK, Tokenizer, load_tokenizers
from .errors import UserError
from .models import build_model
from .models.transformer import TransformerSeq2Seq
from .rundir import EXPORT, abandoned_scratch, check_ours, kind_of, scratch_dir, write_marker
from .search import Hypothesis, output_caps, power
from .translate import Engine, Translator

log = logging.getLogger(__name__)

POSITION_ROWS = 1024  # rows of the exported sinusoid table: the longest sequence CTranslate2 can then handle


def _ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError:
        raise UserError("the ctranslate2 package is not installed: pip install 'seq2seq-kit[ctranslate2]'") from None
    return ctranslate2


def vocabulary(tok: Tokenizer) -> list[str]:
    """Token strings by id: CTranslate2 speaks in token strings, so ids map through these."""
    tokens = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    if len(set(tokens)) != len(tokens):
        dup = next(t for i, t in enumerate(tokens) if t in tokens[:i])
        raise UserError(f"vocabulary has the token {dup!r} twice: CTranslate2 needs unique token strings")
    return tokens


def _linear(spec: Any, layer: torch.nn.Linear) -> None:
    spec.weight = layer.weight.detach().float()
    if layer.bias is not None:
        spec.bias = layer.bias.detach().float()


def _fused(spec: Any, layers: list[torch.nn.Linear]) -> None:
    spec.weight = torch.cat([layer.weight.detach().float() for layer in layers])
    spec.bias = torch.cat([layer.bias.detach().float() for layer in layers])


def _norm(spec: Any, norm: torch.nn.LayerNorm) -> None:
    spec.gamma = norm.weight.detach().float()
    spec.beta = norm.bias.detach().float()


def _self_attention(spec: Any, attn: Any, norm: torch.nn.LayerNorm) -> None:
    """Our q/k/v projections as the spec's one fused [q; k; v] linear, then out and the norm."""
    _fused(spec.linear[0], [attn.q_proj, attn.k_proj, attn.v_proj])
    _linear(spec.linear[1], attn.out_proj)
    _norm(spec.layer_norm, norm)


def _feed_forward(spec: Any, ff: torch.nn.Sequential, norm: torch.nn.LayerNorm) -> None:
    _linear(spec.linear_0, ff[0])
    _linear(spec.linear_1, ff[2])
    _norm(spec.layer_norm, norm)


def position_rows(kind: str, max_positions: int) -> int:
    """Rows of an export's position table, the most positions CTranslate2 can then encode:
    a learned table's own, a sinusoid's written out to ``POSITION_ROWS`` (or further)."""
    return max_positions if kind == "learned" else max(POSITION_ROWS, max_positions)


def _inputs(spec: Any, embed: Any) -> None:
    """Embedding table, position table, sqrt(d) scaling."""
    table = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    table.weight = embed.table.weight.detach().float()
    spec.scale_embeddings = True
    positions = embed.positions
    rows = position_rows(positions.kind, positions.max_positions)
    with torch.no_grad():
        spec.position_encodings.encodings = positions(torch.arange(rows)).float()


def transformer_spec(model: TransformerSeq2Seq, src_tok: Tokenizer, tgt_tok: Tokenizer, pre_norm: bool) -> Any:
    """A filled ``ctranslate2.specs.TransformerSpec`` with this model's weights and vocabularies."""
    _ctranslate2()
    from ctranslate2.specs import transformer_spec as ts

    enc, dec = model.encoder, model.decoder
    spec = ts.TransformerSpec.from_config((len(enc.layers), len(dec.layers)), model.heads, pre_norm=pre_norm)
    spec.config.layer_norm_epsilon = enc.layers[0].norm1.eps
    spec.config.add_source_eos = True
    specials = {UNK: "unk_token", BOS: "bos_token", EOS: "eos_token"}
    src_vocab, tgt_vocab = vocabulary(src_tok), vocabulary(tgt_tok)
    for idx, key in specials.items():
        setattr(spec.config, key, tgt_vocab[idx])
    spec.config.decoder_start_token = tgt_vocab[BOS]
    if src_vocab[EOS] != tgt_vocab[EOS] or src_vocab[UNK] != tgt_vocab[UNK] or src_vocab[PAD] != tgt_vocab[PAD]:
        raise UserError("source and target vocabularies name their special tokens differently")

    _inputs(spec.encoder, enc.embed)
    for layer_spec, layer in zip(spec.encoder.layer, enc.layers):
        _self_attention(layer_spec.self_attention, layer.attn, layer.norm1)
        _feed_forward(layer_spec.ffn, layer.ff, layer.norm2)
    if pre_norm:
        _norm(spec.encoder.layer_norm, enc.norm)

    _inputs(spec.decoder, dec.embed)
    for layer_spec, layer in zip(spec.decoder.layer, dec.layers):
        _self_attention(layer_spec.self_attention, layer.self_attn, layer.norm1)
        c = layer.cross_attn
        _linear(layer_spec.attention.linear[0], c.q_proj)
        _fused(layer_spec.attention.linear[1], [c.k_proj, c.v_proj])
        _linear(layer_spec.attention.linear[2], c.out_proj)
        _norm(layer_spec.attention.layer_norm, layer.norm2)
        _feed_forward(layer_spec.ffn, layer.ff, layer.norm3)
    if pre_norm:
        _norm(spec.decoder.layer_norm, dec.norm)
    _linear(spec.decoder.projection, model.output)

    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    return spec


def model_files(model_dir: Path) -> list[str]:
    """config.yaml and the tokenizer files a model directory needs besides its checkpoints."""
    manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    names = {"config.yaml", MANIFEST}
    for side in ("src", "tgt"):
        names.update(manifest[side][key] for key in ("model", "vocab") if key in manifest[side])
    return sorted(names)


def export_ctranslate2(model_dir: str | Path, out_dir: str | Path, checkpoint: str = "best",
                       quantization: str | None = None, force: bool = False) -> Path:
    """Convert ``MODEL_DIR``'s Transformer into a CTranslate2 model directory ``OUT_DIR``.

    Written into a temporary directory beside ``OUT_DIR`` and renamed into place at the end, so
    an interrupted export leaves no half-written model, and an existing ``OUT_DIR`` stays intact
    until the new one is complete. ``OUT_DIR`` may not be, hold or lie inside ``MODEL_DIR``, and
    an existing one is replaced only with ``force`` and only if it is an earlier export (marked
    as such, holding no other files).
    """
    ct2 = _ctranslate2()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if kind_of(model_dir) == EXPORT:  # said "MODEL_DIR/checkpoints/last.pt: no such checkpoint"
        raise UserError(f"{model_dir}: is already a CTranslate2 export (it has no checkpoints to convert); "
                        f"export the model directory it was made from")
    _check_apart(model_dir, out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        if not force:
            raise UserError(f"{out_dir} already exists (pass --force to replace it)")
        check_ours(out_dir, EXPORT, "replace it")  # an earlier export, holding nothing of the user's
    tr = Translator.load(model_dir, checkpoint=checkpoint, device="cpu")
    if tr.cfg.model.family != "transformer":  # the saved config says what was built, as for every model loaded
        raise UserError(f"{model_dir}: CTranslate2 runs Transformers only; this model's family is "
                        f"{tr.cfg.model.family!r}")
    if tr.cfg.model.copy_attn:
        raise UserError(f"{model_dir}: CTranslate2 cannot represent the copy mechanism (model.copy_attn: true): "
                        f"decode it with the PyTorch engine")
    spec_holder = transformer_spec(tr.model, tr.src_tok, tr.tgt_tok, pre_norm=tr.cfg.model.norm == "pre")

    class _Converter(ct2.converters.Converter):
        def _load(self) -> Any:
            return spec_holder

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(out_dir)
    staging = scratch_dir(out_dir, ".tmp")
    try:
        _Converter().convert(str(staging), quantization=quantization, force=True)
        for name in model_files(model_dir):
            shutil.copy2(model_dir / name, staging / name)
        write_marker(staging, EXPORT)
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _check_apart(model_dir: Path, out_dir: Path) -> None:
    """OUT_DIR must be neither the model directory being exported, nor inside it, nor around it
    (symbolic links resolved): replacing it would destroy the source."""
    src, dst = model_dir.resolve(), out_dir.resolve()
    relation = ("is" if dst == src else "is inside" if src in dst.parents
                else "contains" if dst in src.parents else None)
    if relation:
        raise UserError(f"{out_dir}: {relation} the model directory being exported ({model_dir}); "
                        f"choose an OUT_DIR outside it")


def remove_stale_scratch(out_dir: Path) -> int:
    """Delete the scratch directories that an export to ``out_dir`` killed before it finished
    left beside it (``.NAME.PID.XXXXXXXX.tmp`` while converting, ``.old`` while swapping), those
    whose process is gone; a running export's are kept. Returns how many were removed."""
    removed = 0
    for path in abandoned_scratch(out_dir):
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    if removed:
        log.info("%s: removed %d scratch director%s left by an interrupted export", out_dir.parent, removed,
                 "y" if removed == 1 else "ies")
    return removed


def _swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and deleted only
    once ``new`` is in place (restored if the rename fails)."""
    if not (target.exists() or target.is_symlink()):
        new.rename(target)
        return
    trash = scratch_dir(target, ".old")
    target.rename(trash / target.name)
    try:
        new.rename(target)
    except BaseException:
        (trash / target.name).rename(target)
        trash.rmdir()
        raise
    shutil.rmtree(trash, ignore_errors=True)


def is_ctranslate2_dir(path: str | Path) -> bool:
    return (Path(path) / "model.bin").is_file() and (Path(path) / "config.json").is_file()


class CTranslate2Engine(Engine):
    """The search of a :class:`~seq2seqkit.translate.Translator` run by CTranslate2 on an export.

    Only the search itself (greedy, beam, sampling) runs in the C++ engine; tokenization, the
    input limit, batching by length, n-best handling and detokenization are the Translator's,
    as for the PyTorch engine. Length caps are ours, each input's own (``max_len_a *
    source length + max_len_b``), so an input decodes alike in any batch. The length penalty is passed as is, but CTranslate2 divides by ``length **
    alpha`` where ours is GNMT's ``((5 + length) / 6) ** alpha``, (measured: its scores are ours
    divided by (tokens + EOS) ** alpha), so with alpha > 0 the two can rank long and short
    hypotheses differently; at alpha 0 both rank by log-probability. The generation controls
    are CTranslate2's own options of the same meaning (``no_repeat_ngram_size``,
    ``min_decoding_length``, ``repetition_penalty``). It returns no attention weights.
    """

    name = "ctranslate2"

    def __init__(self, translator: Any, src_tok: Tokenizer, tgt_tok: Tokenizer, cfg: Config) -> None:
        self.translator, self.model_cfg = translator, cfg.model
        self._src_vocab, self._tgt_index = vocabulary(src_tok), {t: i for i, t in enumerate(vocabulary(tgt_tok))}
        self._vocab_sizes = (src_tok.vocab_size, tgt_tok.vocab_size)
        self.device = torch.device(translator.device)

    @property
    def max_positions(self) -> int | None:
        """The rows of the exported position table (:func:`position_rows`): a sinusoidal model's
        positions stop there too in CTranslate2, where ours go on (a longer input or output
        was a RuntimeError that lost the whole output)."""
        return position_rows(self.model_cfg.positions, self.model_cfg.max_positions)

    @property
    def attention_layers(self) -> int:
        return 0

    def num_parameters(self) -> int:
        """The exported Transformer's: counted on a weightless copy of its architecture."""
        with torch.device("meta"):
            return build_model(self.model_cfg, *self._vocab_sizes).num_parameters()

    def placement(self) -> str:
        return f"engine=ctranslate2, compute type={self.translator.compute_type}, device={self.translator.device}"

    def _hypothesis(self, tokens: list[str], score: float, alpha: float) -> Hypothesis:
        """CTranslate2's beam score is the log-probability / (length + EOS) ** alpha: undo it for
        ``score`` (the log-probability, as in ours) and keep it as ``norm_score`` (its ranking)."""
        ids = [self._tgt_index[t] for t in tokens]
        if not alpha:
            return Hypothesis(tokens=ids, score=score)
        return Hypothesis(tokens=ids, score=score * power(len(ids) + 1, alpha), norm_score=score)

    def decode(self, sources: Sequence[Sequence[int]], cfg: SearchConfig,
               attention_layer: int | None = None) -> list[list[Hypothesis]]:
        if attention_layer is not None:
            raise ValueError("CTranslate2 decoding returns no attention weights")
        s = cfg
        options: dict[str, Any] = dict(
            beam_size=1 if s.sample else s.beam_size, num_hypotheses=s.nbest, length_penalty=s.length_penalty,
            return_scores=True, max_input_length=0, patience=1, repetition_penalty=s.repetition_penalty,
        )
        if s.sample:  # top-k beyond the vocabulary keeps every token, as ours does (CTranslate2 refuses it)
            options.update(sampling_topk=min(s.top_k, self._vocab_sizes[1]), sampling_topp=s.top_p,
                           sampling_temperature=s.temperature)
        alpha = options["length_penalty"] if options["beam_size"] > 1 else 0.0
        # CTranslate2 takes one length cap per call; ours is each input's own (the PyTorch engine's
        # caps: within a learned-position model's max_positions), so inputs are decoded in groups of
        # one cap (in a length-sorted batch: a few runs of neighbours).
        caps = output_caps(self, torch.tensor([len(ids) + 1 for ids in sources]), s.max_len_a, s.max_len_b,
                           s.max_output_tokens, s.min_len)
        groups: dict[int, list[int]] = {}
        for i, cap in enumerate(caps):
            groups.setdefault(cap, []).append(i)
        out: list[list[Hypothesis]] = [[] for _ in sources]
        for cap, idx in groups.items():
            batch = [[self._src_vocab[t] for t in sources[i]] for i in idx]
            # C++ sizes (a setting beyond int64 was a TypeError): a floor above the cap (the position
            # table's rows at most) is the cap, an n-gram longer than any output bans nothing (off)
            controls = dict(min_decoding_length=min(s.min_len, cap),
                            no_repeat_ngram_size=s.no_repeat_ngram_size if s.no_repeat_ngram_size <= cap else 0)
            for i, res in zip(idx, self.translator.translate_batch(batch, max_decoding_length=cap, **options,
                                                                   **controls)):
                out[i] = [self._hypothesis(hyp, score, alpha) for hyp, score in zip(res.hypotheses, res.scores)]
        return out


def load_ctranslate2(model_dir: str | Path, device: str = "auto", compute_type: str = "default",
                     threads: int | None = None) -> Translator:
    """A :class:`~seq2seqkit.translate.Translator` over an exported directory (``s2s export
    --format ctranslate2``) run by CTranslate2. ``threads`` None: as many as PyTorch uses
    (``torch.get_num_threads()``, which honours ``OMP_NUM_THREADS``), so both engines run under
    one thread policy; CTranslate2's own default is 4, more than a 2-core machine has."""
    ct2 = _ctranslate2()
    model_dir = Path(model_dir)
    if not is_ctranslate2_dir(model_dir):
        raise UserError(f"{model_dir}: not a CTranslate2 model directory (no model.bin/config.json); create one "
                        f"with 's2s export --format ctranslate2 MODEL_DIR OUT_DIR'")
    cfg = load_saved_config(model_dir / "config.yaml")
    src_tok, tgt_tok = load_tokenizers(model_dir)
    dev = "cuda" if device == "cuda" or (device == "auto" and ct2.get_cuda_device_count() > 0) else "cpu"
    try:
        engine = ct2.Translator(str(model_dir), device=dev, compute_type=compute_type,
                                intra_threads=torch.get_num_threads() if threads is None else threads)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"{model_dir}: CTranslate2 cannot load it ({e})") from None
    return Translator(CTranslate2Engine(engine, src_tok, tgt_tok, cfg), src_tok, tgt_tok, cfg)


class CTranslate2Translator(Translator):
    """The Python API's name for a :class:`~seq2seqkit.translate.Translator` over CTranslate2:
    ``CTranslate2Translator.load(DIR)`` is :func:`load_ctranslate2`."""

    @classmethod
    def load(cls, model_dir: str | Path, checkpoint: str = "best", device: str = "auto",  # type: ignore[override]
             compute_type: str = "default", threads: int | None = None) -> Translator:
        """``checkpoint`` is fixed at export time and ignored here."""
        return load_ctranslate2(model_dir, device, compute_type, threads)
