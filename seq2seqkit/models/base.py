"""The one interface every model family implements.

Search, training, evaluation and serving talk to models only through these methods, so they
never ask which family they hold:

* ``encode(src, src_lens)`` reads the whole input once;
* ``init_state(enc)`` and ``decode_step(prev, enc, state, attention_layer=None)`` generate one
  token at a time (greedy, beam search, sampling, scheduled sampling, free-running validation);
  with ``attention_layer`` set, the step also returns that attention's weights over the source
  (for heatmaps), which costs memory and, for some families, compute, so it is never the default;
* ``attention_layers`` says how many attentions a model can return weights of (0: none), and
  ``max_positions`` how long a source (and how many decoding steps) it can take (None: any);
* ``forward(src, src_lens, tgt_in)`` scores a whole target at once under teacher forcing
  (training), which a family may compute far faster than step by step;
  ``forward_with_losses`` also returns the model's own auxiliary training losses (per target
  position, e.g. coverage), which training adds with their configured weights.

What every family returns as "logits" (``decode_step(...).logits``, ``forward``): next-token
scores defined up to a constant per row, i.e. ``log_softmax(logits)`` is the model's
log-distribution. A plain output layer returns its logits; a copy model (``copy.py``) returns the
normalised log-probabilities of its mixture, which are such scores too (``log_softmax`` leaves
them unchanged, and so does cross-entropy with or without label smoothing). Search, training and
the ensemble normalise with ``log_softmax``, so none of them asks which kind a model returns.

Encoder outputs and decoder states are nested dicts/tuples of tensors whose first dimension
is the batch, so search can select, repeat and reorder hypotheses with one generic function.
Joining two batches is the family's own business (``merge``): their sources may differ in length
and their rows in how many steps they have decoded, which only the family knows how to pad
(step-level batching in ``s2s serve`` admits new inputs into a running batch with it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

State = Any  # nested dict / tuple / list of batch-first tensors (or None)
Losses = Mapping[str, torch.Tensor]  # auxiliary training losses by name (e.g. "coverage"), per row / position
NO_LOSSES: Losses = MappingProxyType({})


class StepOutput(NamedTuple):
    logits: torch.Tensor  # (B, V) scores of the next token: log_softmax of them is the distribution
    state: State  # to pass to the next step
    attention: torch.Tensor | None  # (B, S) weights over source positions, when asked for and the family has them
    losses: Losses = NO_LOSSES  # (B,) auxiliary training losses of this step (as forward_with_losses' per position)


def map_batch(obj: State, fn: Callable[[torch.Tensor], torch.Tensor]) -> State:
    """Apply ``fn`` to every tensor in a nested state (e.g. ``lambda t: t.index_select(0, idx)``)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_batch(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_batch(v, fn) for v in obj)
    return obj


def select(obj: State, index: torch.Tensor) -> State:
    """Keep / repeat / reorder batch rows of a nested state."""
    return map_batch(obj, lambda t: t.index_select(0, index))


def cat_padded(a: torch.Tensor, b: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``a``'s rows then ``b``'s (concatenated along the batch, dim 0); with ``dim``, the shorter
    of the two is first padded with zeros (False, PAD) along that axis to the other's length."""
    if dim is not None and a.size(dim) != b.size(dim):
        n = max(a.size(dim), b.size(dim))
        a, b = (torch.cat([t, t.new_zeros(*t.shape[:dim], n - t.size(dim), *t.shape[dim + 1 :])], dim=dim)
                if t.size(dim) < n else t for t in (a, b))
    return torch.cat([a, b])


def merge_rows(a: State, b: State, axes: Mapping[str, int] | None = None) -> State:
    """Two nested states of the same structure as one batch (``a``'s rows first): every tensor
    concatenated along the batch; a dict entry named in ``axes`` is padded along that axis (a
    source axis: positions, masks, ids; all pad with zeros) as :func:`cat_padded` does, and so
    is every tensor inside it."""
    axes = axes or {}

    def go(x: State, y: State, dim: int | None) -> State:
        if isinstance(x, torch.Tensor):
            return cat_padded(x, y, dim)
        if isinstance(x, dict):
            return {k: go(v, y[k], axes.get(k, dim)) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(go(u, v, dim) for u, v in zip(x, y))
        return x

    return go(a, b, None)


class Seq2SeqModel(nn.Module, ABC):
    """Base class of all families. Subclasses set ``src_vocab`` and ``tgt_vocab``."""

    src_vocab: int
    tgt_vocab: int

    @abstractmethod
    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> State:
        """(B, S) source ids (EOS-terminated, PAD-padded) -> encoder output."""

    @abstractmethod
    def init_state(self, enc: State) -> State:
        """The decoder state before the first target token."""

    @abstractmethod
    def decode_step(self, prev: torch.Tensor, enc: State, state: State, attention_layer: int | None = None) -> StepOutput:
        """Feed one token per sentence ((B,) ids) and get the next-token logits; with
        ``attention_layer`` (an index checked by :func:`check_attention_layer`) also the weights of
        that attention over the source, otherwise ``attention`` is None."""

    @property
    @abstractmethod
    def attention_layers(self) -> int:
        """How many attentions over the source ``decode_step`` can return weights of: 0 for a
        family without attention, 1 for an attention RNN, one per decoder layer for the Transformer."""

    @abstractmethod
    def forward(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for ``tgt_in`` = BOS + target."""

    def forward_with_losses(self, src: torch.Tensor, src_lens: torch.Tensor,
                            tgt_in: torch.Tensor) -> tuple[torch.Tensor, Losses]:
        """``forward``'s logits and the model's auxiliary training losses, each (B, T) per target
        position (padding included: the caller masks it); none unless a family defines some."""
        return self(src, src_lens, tgt_in), NO_LOSSES

    def merge(self, enc: State, state: State, new_enc: State, new_state: State) -> tuple[State, State]:
        """Two batches as one: the encoder outputs and decoder states of ``enc``/``state`` (rows
        first) and of ``new_enc``/``new_state`` (rows after), such that every row then decodes
        exactly as it did in its own batch, whatever the sources' lengths and however many steps
        each row has decoded (continuous batching: inputs join a running batch between steps).
        Each family pads what it alone knows has a source or a step axis."""
        raise NotImplementedError(f"{type(self).__name__} cannot merge batches")

    @property
    def max_positions(self) -> int | None:
        """The longest source (EOS included) the model can encode and the most steps it can
        decode, where its architecture caps them (learned positions); None: no cap."""
        return None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class HasAttention(Protocol):
    @property
    def attention_layers(self) -> int: ...


def check_attention_layer(model: HasAttention, layer: int) -> None:
    """Refuse (ValueError naming the valid range) an ``attention_layer`` the model does not have;
    valid: ``0 .. attention_layers - 1``, or negative ones counting from the last, as in Python.
    Families take ``layer % attention_layers`` of a checked index; nothing wraps around unchecked."""
    n = model.attention_layers
    if n == 0:
        raise ValueError("this model has no attention over the source")
    if not -n <= layer < n:
        raise ValueError(f"{layer} is out of range: this model has {n} attention layer{'s' * (n != 1)} "
                         f"(0..{n - 1}, or -{n}..-1 counting from the last)")
