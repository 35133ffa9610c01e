"""The Transformer (Vaswani et al. 2017): attention only, no recurrence.

Every position of the source attends to every other (encoder self-attention); every target
position attends to the ones before it (causal self-attention) and to the whole encoded
source (cross-attention). Training scores a whole target in one parallel pass under a causal
mask. Generation runs one position at a time with a **KV cache**: each decoder layer keeps
the keys and values of the positions already generated, so a step costs O(t) instead of
re-running the O(t^2) prefix, and the cross-attention keys/values of the source are projected
once in ``encode``.

Where the paper leaves choices open: ``norm="pre"`` (default) puts LayerNorm before each
sublayer and one after the last block (trains stably without careful warm-up); ``"post"`` is
the original. Positions are sinusoidal (any length) or learned (up to ``max_positions``).

With ``model.copy_attn`` (pointer-generator, ``copy.py``) the copy distribution is the
cross-attention of the *first head of the last* decoder layer (computed explicitly, since SDPA
does not return weights), as in OpenNMT-py: that head learns to point while the others stay free
to gather context (the mean over heads would ask every head of the layer to point), and the gate
p_gen reads
[decoder output; the context that attention gives over the encoder output; the decoder's input
(token embedding + position)]. Coverage (``model.coverage``) is the sum of that distribution
over the steps so far, kept in the decoder state; it enters the loss, not the attention.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import TransformerConfig
from ..data.tokenizers import PAD
from .base import NO_LOSSES, Losses, Seq2SeqModel, State, StepOutput, cat_padded, merge_rows
from .copy import CopyGate, copy_log_probs, coverage_losses, step_coverage_loss
from .dropout import Dropout

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, heads, length, d_head) each

# SDPA kernels on a GPU, cuDNN's left out: it builds an execution plan for every new input shape
# (~0.35 s each on an H200), and sequence-to-sequence batches bring a new (batch, length) shape at
# nearly every step: the Multi30k Transformer's first epoch took 36 s there instead of ~6 s, and
# without it a masked attention over 40 shapes ran in 0.21 s instead of 14 s (BENCHMARKS.md, GPU).
GPU_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention in ``heads`` subspaces via ``F.scaled_dot_product_attention``.

    Keys/values are projected by their own method so that callers can project them once and
    reuse them (the decoder's self-attention cache and the source's cross-attention K/V).
    """

    def __init__(self, dim: int, heads: int, attention_dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.embed_dim ({dim}) must be divisible by model.heads ({heads})")
        self.heads, self.d_head, self.attention_dropout = heads, dim // heads, attention_dropout
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, d_head)
        return x.view(x.size(0), x.size(1), self.heads, self.d_head).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> KV:
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """Queries from ``x`` (B, T, D) over ``k``/``v``; ``mask`` (B, S) True = may be attended."""
        q = self._split(self.q_proj(x))
        with sdpa_kernel(GPU_SDPA) if q.is_cuda else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if mask is None else mask[:, None, None, :],
                dropout_p=self.attention_dropout if self.training else 0.0, is_causal=is_causal,
            )
        return self.out_proj(out.transpose(1, 2).reshape(x.shape))

    def weights(self, x: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights of every head (B, heads, T, S), computed explicitly because SDPA does
        not return them; only for inspection (plots) and copying, so never unless asked for."""
        q = self._split(self.q_proj(x))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1)


class FeedForward(nn.Sequential):
    """The position-wise two-layer ReLU network of each block."""

    def __init__(self, dim: int, ff_dim: int) -> None:
        super().__init__(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim))


class Positions(nn.Module):
    """Position index -> vector added to the token embedding.

    Sinusoidal: fixed sin/cos at geometric wavelengths, computed on the fly for any position.
    Learned: one trained vector per position, so lengths are capped at ``max_positions``.
    """

    def __init__(self, kind: str, dim: int, max_positions: int) -> None:
        super().__init__()
        self.kind, self.dim, self.max_positions = kind, dim, max_positions
        if kind == "learned":
            self.table = nn.Embedding(max_positions, dim)
        else:
            inv_freq = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)  # not a parameter, not saved

    def check(self, length: int) -> None:
        """Fail clearly (not with an index error) when learned positions run out."""
        if self.kind == "learned" and length > self.max_positions:
            raise ValueError(f"sequence of {length} positions exceeds model.max_positions={self.max_positions}")

    def forward(self, pos: torch.Tensor) -> torch.Tensor:  # (...) long -> (..., D)
        if self.kind == "learned":
            return self.table(pos)
        angles = pos.unsqueeze(-1).float() * self.inv_freq
        return torch.cat([angles.sin(), angles.cos()], dim=-1)[..., : self.dim]


class Embedder(nn.Module):
    """Token embedding * sqrt(d_model) + position, then dropout. Embeddings are initialised
    with std d^-1/2 (they may double as the output projection); the scale brings them back to
    the magnitude of the position encodings."""

    def __init__(self, cfg: TransformerConfig, table: nn.Embedding) -> None:
        super().__init__()
        self.table = table  # possibly shared with the other side (share_embeddings)
        self.positions = Positions(cfg.positions, cfg.embed_dim, cfg.max_positions)
        self.scale = math.sqrt(cfg.embed_dim)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens (B, T), pos (B, T) or (T,) -> (B, T, D)."""
        return self.dropout(self.table(tokens) * self.scale + self.positions(pos))


class Block(nn.Module):
    """Residual wiring shared by encoder and decoder layers.

    pre-norm:  x + drop(f(LN(x)))  -- the residual stream is never normalised, which keeps
    gradients well-scaled in deep stacks; the stack then needs a final LN.
    post-norm: LN(x + drop(f(x)))  -- the original paper.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.dropout = Dropout(cfg.dropout)

    def sub_in(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        return norm(x) if self.pre else x

    def sub_out(self, x: torch.Tensor, y: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        x = x + self.dropout(y)
        return x if self.pre else norm(x)


class EncoderLayer(Block):
    """Self-attention over the (unpadded) source, then the feed-forward network."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        d = cfg.embed_dim
        self.attn = MultiHeadAttention(d, cfg.heads, cfg.attention_dropout)
        self.ff = FeedForward(d, cfg.ff_dim)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.sub_in(x, self.norm1)
        x = self.sub_out(x, self.attn(h, *self.attn.keys_values(h), mask), self.norm1)
        return self.sub_out(x, self.ff(self.sub_in(x, self.norm2)), self.norm2)


class DecoderLayer(Block):
    """Causal self-attention, cross-attention over the source, feed-forward network."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        d = cfg.embed_dim
        self.self_attn = MultiHeadAttention(d, cfg.heads, cfg.attention_dropout)
        self.cross_attn = MultiHeadAttention(d, cfg.heads, cfg.attention_dropout)
        self.ff = FeedForward(d, cfg.ff_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, cross: KV, src_mask: torch.Tensor, cache: KV | None = None,
                need_weights: bool = False, self_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, KV, torch.Tensor | None]:
        """``cache`` None: ``x`` (B, T, D) is a whole target prefix, attended causally.
        Otherwise ``x`` (B, 1, D) is the next position and ``cache`` holds the self-attention
        K/V of all earlier ones: no causal mask is needed, since they all precede it; in a merged
        batch (rows that joined at different steps) ``self_mask`` (B, t + 1) says which cached
        entries (and the new one) are a row's own.
        Returns the output, the K/V of all positions so far, and (if ``need_weights``) the
        cross-attention weights of every head (B, heads, T, S)."""
        h = self.sub_in(x, self.norm1)
        k, v = self.self_attn.keys_values(h)
        if cache is not None:
            assert x.size(1) == 1, "cached decoding feeds one position at a time"
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        x = self.sub_out(x, self.self_attn(h, k, v, self_mask, is_causal=cache is None), self.norm1)
        h = self.sub_in(x, self.norm2)
        x = self.sub_out(x, self.cross_attn(h, *cross, src_mask), self.norm2)
        weights = self.cross_attn.weights(h, cross[0], src_mask) if need_weights else None
        x = self.sub_out(x, self.ff(self.sub_in(x, self.norm3)), self.norm3)
        return x, (k, v), weights


class Encoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, table: nn.Embedding) -> None:
        super().__init__()
        self.embed = Embedder(cfg, table)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.norm = nn.LayerNorm(cfg.embed_dim) if cfg.norm == "pre" else nn.Identity()

    def forward(self, src: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """src (B, S) ids, mask (B, S) True = real token -> memory (B, S, D)."""
        self.embed.positions.check(src.size(1))
        x = self.embed(src, torch.arange(src.size(1), device=src.device))
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class DecoderOutput(NamedTuple):
    feats: torch.Tensor  # (B, T, D) after the last layer (and final norm)
    cache: tuple[KV, ...]  # every layer's self-attention K/V of all positions so far
    attention: torch.Tensor | None  # (B, T, S) head-averaged cross-attention of the asked-for layer
    copy_attention: torch.Tensor | None  # (B, T, S) the last layer's first head's, when asked for (copy)
    inputs: torch.Tensor  # (B, T, D) the first layer's input: token embedding + position


class Decoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, table: nn.Embedding) -> None:
        super().__init__()
        self.embed = Embedder(cfg, table)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(cfg.embed_dim) if cfg.norm == "pre" else nn.Identity()

    def cross_keys_values(self, memory: torch.Tensor) -> tuple[KV, ...]:
        """Every layer's cross-attention K/V of the source: computed once per sentence."""
        return tuple(layer.cross_attn.keys_values(memory) for layer in self.layers)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, enc: State, cache: tuple[KV, ...] | None = None,
                attention_layer: int | None = None, copy_attention: bool = False,
                self_mask: torch.Tensor | None = None) -> DecoderOutput:
        """Decoder features, K/V cache, the head-averaged cross-attention weights of layer
        ``attention_layer`` (None: not computed) and, with ``copy_attention``, the copy
        distribution: the cross-attention of the last layer's first head. ``self_mask``: which
        cache entries each row may attend to (see :class:`DecoderLayer`)."""
        x = inputs = self.embed(tokens, pos)
        last = len(self.layers) - 1
        want = None if attention_layer is None else attention_layer % len(self.layers)  # checked by the caller
        new_cache, weights, copy_weights = [], None, None
        for i, layer in enumerate(self.layers):
            need = i == want or (copy_attention and i == last)
            x, kv, w = layer(x, enc["cross"][i], enc["mask"], None if cache is None else cache[i], need, self_mask)
            new_cache.append(kv)
            if i == want:
                weights = w.mean(dim=1)
            if copy_attention and i == last:
                copy_weights = w[:, 0]
        return DecoderOutput(self.norm(x), tuple(new_cache), weights, copy_weights, inputs)


class TransformerSeq2Seq(Seq2SeqModel):
    """Encoder-decoder Transformer.

    enc: ``{"memory": (B, S, D), "mask": (B, S) True = real, "cross": per layer (K, V)}``;
    decoder state: ``{"pos": (B,) index of the next position, "self": per layer (K, V) of the
    positions so far, each (B, heads, t, d_head)}``; a merged batch (``merge``: rows that joined
    at different steps) also holds ``"self_mask"`` (B, t), True where a cache entry is the row's
    own, and each row keeps its own ``pos``. ``decode_step(..., attention_layer=i)``
    also returns the head-averaged cross-attention weights of decoder layer ``i`` (computed
    explicitly, since SDPA does not return them, so only when asked for). With copy, enc also
    holds ``"src"`` (B, S) ids; with coverage, the state ``"coverage"`` (B, S).
    """

    def __init__(self, cfg: TransformerConfig, src_vocab: int, tgt_vocab: int) -> None:
        super().__init__()
        if cfg.share_embeddings and src_vocab != tgt_vocab:
            raise ValueError(f"model.share_embeddings needs one vocabulary for both sides, but the source has "
                             f"{src_vocab} tokens and the target {tgt_vocab} (use tokenizer.joint: true)")
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.heads, self.d_head = cfg.heads, cfg.embed_dim // cfg.heads
        tgt_table = nn.Embedding(tgt_vocab, cfg.embed_dim, padding_idx=PAD)
        src_table = tgt_table if cfg.share_embeddings else nn.Embedding(src_vocab, cfg.embed_dim, padding_idx=PAD)
        self.encoder = Encoder(cfg, src_table)
        self.decoder = Decoder(cfg, tgt_table)
        self.output = nn.Linear(cfg.embed_dim, tgt_vocab, bias=False)
        if cfg.copy_attn and src_vocab != tgt_vocab:
            raise ValueError(f"model.copy_attn needs one vocabulary for both sides, but the source has {src_vocab} "
                             f"tokens and the target {tgt_vocab} (use tokenizer.joint: true)")
        self.copy_gate = CopyGate(3 * cfg.embed_dim) if cfg.copy_attn else None
        self.coverage = cfg.coverage
        self._init_weights(cfg.embed_dim)
        if cfg.tie_embeddings:
            self.output.weight = tgt_table.weight

    def _init_weights(self, dim: int) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):  # tokens and learned positions
                nn.init.normal_(m.weight, mean=0.0, std=dim**-0.5)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()

    # -- interface -------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> State:
        mask = torch.arange(src.size(1), device=src.device)[None, :] < src_lens[:, None]
        memory = self.encoder(src, mask)
        enc = {"memory": memory, "mask": mask, "cross": self.decoder.cross_keys_values(memory)}
        if self.copy_gate is not None:
            enc["src"] = src
        return enc

    def init_state(self, enc: State) -> State:
        memory = enc["memory"]
        empty = memory.new_zeros(memory.size(0), self.heads, 0, self.d_head)
        state = {
            "pos": torch.zeros(memory.size(0), dtype=torch.long, device=memory.device),
            "self": tuple((empty, empty) for _ in self.decoder.layers),
        }
        if self.coverage:
            state["coverage"] = enc["mask"].new_zeros(enc["mask"].shape, dtype=torch.float32)
        return state

    @property
    def attention_layers(self) -> int:
        return len(self.decoder.layers)

    @property
    def max_positions(self) -> int | None:
        pos = self.encoder.embed.positions  # the decoder's table has the same size
        return pos.max_positions if pos.kind == "learned" else None

    def merge(self, enc: State, state: State, new_enc: State, new_state: State) -> tuple[State, State]:
        """Sources padded (``mask`` False, ids PAD); the self-attention caches padded to the longer
        one, with ``self_mask`` marking each row's own entries (a row appends its next ones after
        the padding: attention does not care where a key sits, the positions are in the
        embeddings). Cache columns no row owns any more (their rows left) are dropped."""
        enc = merge_rows(enc, new_enc, {"memory": 1, "mask": 1, "src": 1, "cross": 2})
        merged = merge_rows({k: v for k, v in state.items() if k != "self_mask"},
                            {k: v for k, v in new_state.items() if k != "self_mask"}, {"self": 2, "coverage": 1})
        mask = cat_padded(self._self_mask(state), self._self_mask(new_state), 1)
        owned = mask.any(dim=0)
        if not bool(owned.all()):
            cols = owned.nonzero().squeeze(1)
            mask, merged["self"] = mask[:, cols], tuple((k[:, :, cols], v[:, :, cols]) for k, v in merged["self"])
        return enc, {**merged, "self_mask": mask}

    @staticmethod
    def _self_mask(state: State) -> torch.Tensor:
        """Which self-attention cache entries are each row's own (all of them, before any merge)."""
        if "self_mask" in state:
            return state["self_mask"]
        k = state["self"][0][0]
        return torch.ones(k.size(0), k.size(2), dtype=torch.bool, device=k.device)

    def decode_step(self, prev: torch.Tensor, enc: State, state: State, attention_layer: int | None = None) -> StepOutput:
        mask = state.get("self_mask")
        if mask is not None:  # a merged batch: rows own part of the cache; the next entry is every row's
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
        # Positions: a row's next one (the cache may be longer than a merged row's output).
        self.decoder.embed.positions.check(state["self"][0][0].size(2) + 1 if mask is None
                                           else int(state["pos"].max()) + 1)
        out = self.decoder(prev[:, None], state["pos"][:, None], enc, state["self"], attention_layer,
                           copy_attention=self.copy_gate is not None, self_mask=mask)
        new_state = {"pos": state["pos"] + 1, "self": out.cache}
        if mask is not None:
            new_state["self_mask"] = mask
        losses: Losses = NO_LOSSES
        if self.coverage:
            copy_attn = out.copy_attention[:, 0]
            losses = {"coverage": step_coverage_loss(copy_attn, state["coverage"])}
            new_state["coverage"] = state["coverage"] + copy_attn.float()
        return StepOutput(self._predict(out, enc)[:, 0], new_state,
                          None if out.attention is None else out.attention[:, 0], losses)

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.forward_with_losses(src, src_lens, tgt_in)[0]

    def forward_with_losses(self, src: torch.Tensor, src_lens: torch.Tensor,
                            tgt_in: torch.Tensor) -> tuple[torch.Tensor, Losses]:
        enc = self.encode(src, src_lens)
        out = self._teacher_forced(tgt_in, enc)
        losses = {"coverage": coverage_losses(out.copy_attention)} if self.coverage else NO_LOSSES
        return self._predict(out, enc), losses

    def _predict(self, out: DecoderOutput, enc: State) -> torch.Tensor:
        """Decoder output -> next-token scores (B, T, V): the output layer's logits, or with copy
        the log-probabilities of the pointer-generator mixture (see ``base``: both are logits)."""
        logits = self.output(out.feats)
        if self.copy_gate is None:
            return logits
        attn = out.copy_attention  # (B, T, S)
        context = torch.bmm(attn.to(enc["memory"].dtype), enc["memory"])  # over the encoder output
        return copy_log_probs(logits, self.copy_gate(out.feats, context, out.inputs), attn, enc["src"])

    # -- without the cache (a reference for tests) --------------------------------------------
    def decode_step_uncached(self, prefix: torch.Tensor, enc: State) -> torch.Tensor:
        """Next-token logits (B, V) after ``prefix`` (B, t) = BOS + tokens so far, recomputing
        the whole prefix: what ``decode_step`` must equal, at O(t^2) cost per step."""
        return self._predict(self._teacher_forced(prefix, enc), enc)[:, -1]

    def _teacher_forced(self, tgt_in: torch.Tensor, enc: State) -> DecoderOutput:
        self.decoder.embed.positions.check(tgt_in.size(1))
        return self.decoder(tgt_in, torch.arange(tgt_in.size(1), device=tgt_in.device), enc,
                            copy_attention=self.copy_gate is not None)
