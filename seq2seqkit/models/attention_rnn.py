"""RNN encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015).

The plain model (``rnn.py``) squeezes the whole input into one context vector. Here the
decoder looks back at *every* encoder state at every step and takes a weighted average of
them, so long inputs stop being a bottleneck and each output token can align to its source.
The encoder, the bridge to the decoder's initial state and the output layer are those of
``rnn.py``; only the decoder differs:

* ``bahdanau``: attend with the *previous* decoder state, feed the context into the RNN with
  the input embedding; predict from [state; context; embedding].
* ``luong_dot`` / ``luong_general``: step the RNN first, attend with the *new* top state h_t,
  and predict from the attentional vector h~_t = tanh(W_c [c_t; h_t]). With ``input_feeding``
  h~_{t-1} is fed with the next input, so the decoder knows what it attended to before; without
  it the RNN never sees attention and teacher-forced training runs the whole target at once.

With ``model.copy_attn`` the prediction is the pointer-generator mixture of ``copy.py``: the gate
p_gen reads [top decoder state; context vector; input embedding] (See et al. eq. 8; for Luong the
new state h_t and its context) and the copy distribution is this attention. With
``model.coverage`` the decoder state carries the coverage vector and every step reports its
coverage loss; ``model.coverage_feature`` (Bahdanau) adds ``w_c * c_i`` inside the attention's
tanh (See et al. eq. 11).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AttentionConfig
from ..data.tokenizers import PAD
from ..errors import ConfigError
from .attention import AdditiveAttention, Attention, DotAttention, GeneralAttention
from .base import NO_LOSSES, Losses, Seq2SeqModel, State, StepOutput, merge_rows
from .copy import CopyGate, copy_log_probs, coverage_losses, step_coverage_loss
from .dropout import Dropout
from .rnn import RNNS, Bridge, OutputLayer, RNNEncoder, bridged_state


def build_attention(kind: str, query_dim: int, key_dim: int) -> Attention:
    if kind == "bahdanau":
        return AdditiveAttention(query_dim, key_dim, attn_dim=query_dim)
    if kind == "luong_dot":
        if query_dim != key_dim:
            raise ConfigError(f"model.attention: luong_dot needs encoder states ({key_dim}) as wide as the decoder "
                              f"({query_dim}); set model.bidirectional: false or use luong_general")
        return DotAttention(query_dim, key_dim)
    return GeneralAttention(query_dim, key_dim)


class AttentionRNNSeq2Seq(Seq2SeqModel):
    """Encoder states + attention -> decoder. Encoder output: ``{"memory", "proj", "mask",
    "context"[, "cell"][, "src": ids, with copy]}``; decoder state: ``{"h": (B, L, H)[, "c"]
    [, "feed": (B, H)][, "coverage": (B, S), with coverage]}``."""

    def __init__(self, cfg: AttentionConfig, src_vocab: int, tgt_vocab: int) -> None:
        super().__init__()
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.is_lstm = cfg.cell == "lstm"
        self.luong = cfg.attention != "bahdanau"
        self.input_feeding = self.luong and cfg.input_feeding  # Bahdanau always feeds its context
        self.hidden = cfg.hidden_size
        self.encoder = RNNEncoder(cfg, src_vocab)
        mem = self.encoder.out_dim
        self.bridge_h = Bridge(mem, cfg.hidden_size, cfg.decoder_layers)
        self.bridge_c = Bridge(mem, cfg.hidden_size, cfg.decoder_layers) if self.is_lstm else None
        self.attention = build_attention(cfg.attention, cfg.hidden_size, mem)
        self.embed = nn.Embedding(tgt_vocab, cfg.embed_dim, padding_idx=PAD)
        self.dropout = Dropout(cfg.dropout)
        extra = (cfg.hidden_size if self.input_feeding else 0) if self.luong else mem
        self.rnn = RNNS[cfg.cell](
            cfg.embed_dim + extra, cfg.hidden_size, num_layers=cfg.decoder_layers, batch_first=True,
            dropout=cfg.dropout if cfg.decoder_layers > 1 else 0.0,
        )
        self.combine = nn.Linear(mem + cfg.hidden_size, cfg.hidden_size, bias=False) if self.luong else None  # W_c
        feat = cfg.hidden_size if self.luong else cfg.hidden_size + mem + cfg.embed_dim
        self.output = OutputLayer(feat, self.embed, cfg.dropout, cfg.tie_embeddings)
        if cfg.copy_attn and src_vocab != tgt_vocab:
            raise ValueError(f"model.copy_attn needs one vocabulary for both sides, but the source has {src_vocab} "
                             f"tokens and the target {tgt_vocab} (use tokenizer.joint: true)")
        self.copy_gate = CopyGate(cfg.hidden_size + mem + cfg.embed_dim) if cfg.copy_attn else None
        self.coverage = cfg.coverage
        self.coverage_proj = nn.Linear(1, cfg.hidden_size, bias=False) if cfg.coverage_feature else None  # w_c

    # -- interface -------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> State:
        memory, h, c = self.encoder(src, src_lens)
        mask = torch.arange(src.size(1), device=src.device) < src_lens.to(src.device).unsqueeze(1)
        enc = {"memory": memory, "proj": self.attention.precompute(memory), "mask": mask, "context": h}
        if c is not None:
            enc["cell"] = c
        if self.copy_gate is not None:
            enc["src"] = src
        return enc

    def init_state(self, enc: State) -> State:
        state = bridged_state(self.bridge_h, self.bridge_c, enc)
        if self.input_feeding:
            state["feed"] = enc["context"].new_zeros(enc["context"].size(0), self.hidden)
        if self.coverage:
            state["coverage"] = enc["mask"].new_zeros(enc["mask"].shape, dtype=torch.float32)
        return state

    def merge(self, enc: State, state: State, new_enc: State, new_state: State) -> tuple[State, State]:
        # Source positions padded (mask False: no attention, no copy mass, no coverage).
        axes = {"memory": 1, "proj": 1, "mask": 1, "src": 1, "coverage": 1}
        return merge_rows(enc, new_enc, axes), merge_rows(state, new_state, axes)

    @property
    def attention_layers(self) -> int:
        return 1

    def decode_step(self, prev: torch.Tensor, enc: State, state: State, attention_layer: int | None = None) -> StepOutput:
        feats, new_state, weights, gate_in = self._step(self.dropout(self.embed(prev)), enc, state)
        losses = {"coverage": step_coverage_loss(weights, state["coverage"])} if self.coverage else NO_LOSSES
        return StepOutput(self._predict(feats, gate_in, weights, enc), new_state,
                          None if attention_layer is None else weights, losses)

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(src, src_lens, tgt_in)[0]

    def forward_with_losses(self, src: torch.Tensor, src_lens: torch.Tensor,
                            tgt_in: torch.Tensor) -> tuple[torch.Tensor, Losses]:
        scores, weights = self.forward_with_attention(src, src_lens, tgt_in)
        return scores, ({"coverage": coverage_losses(weights)} if self.coverage else NO_LOSSES)

    def forward_with_attention(
        self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits (B, T, V) (with copy: mixture log-probabilities) and attention weights (B, T, S)."""
        enc = self.encode(src, src_lens)
        state = self.init_state(enc)
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E), embedded once for all steps
        if self.luong and not self.input_feeding:  # attention never reaches the RNN: all steps at once
            out, _ = self._rnn(emb, state)
            feats, weights, context = self._attend(out, enc)
            gate_in = torch.cat([out, context, emb], dim=-1) if self.copy_gate is not None else None
        else:  # each step's input depends on the previous step's attention
            steps = []
            for t in range(emb.size(1)):
                f, state, w, g = self._step(emb[:, t], enc, state)
                steps.append((f, w, g))
            feats, weights = (torch.stack(x, dim=1) for x in list(zip(*steps))[:2])
            gate_in = torch.stack([g for _, _, g in steps], dim=1) if self.copy_gate is not None else None
        return self._predict(feats, gate_in, weights, enc), weights  # the output layer also runs once for all steps

    # -- decoder pieces --------------------------------------------------------------------
    def _step(self, emb: torch.Tensor, enc: State, state: State
              ) -> tuple[torch.Tensor, State, torch.Tensor, torch.Tensor | None]:
        """One target position: (B, E) input embedding -> output features, new state, (B, S)
        weights, and with copy the gate's input [top state; context; embedding]."""
        if self.luong:
            x = torch.cat([emb, state["feed"]], dim=-1) if self.input_feeding else emb
            out, new_state = self._rnn(x.unsqueeze(1), state)
            h = out.squeeze(1)
            feats, weights, context = self._attend(h, enc)
            if self.input_feeding:
                new_state["feed"] = feats
        else:
            proj = enc["proj"]
            if self.coverage_proj is not None:
                proj = proj + self.coverage_proj(state["coverage"].unsqueeze(-1).to(proj.dtype))
            context, weights = self.attention(state["h"][:, -1], enc["memory"], proj, enc["mask"])
            out, new_state = self._rnn(torch.cat([emb, context], dim=-1).unsqueeze(1), state)
            h = out.squeeze(1)
            feats = torch.cat([h, context, emb], dim=-1)
        if self.coverage:
            new_state["coverage"] = state["coverage"] + weights.float()
        gate_in = torch.cat([h, context, emb], dim=-1) if self.copy_gate is not None else None
        return feats, new_state, weights, gate_in

    def _attend(self, h: torch.Tensor, enc: State) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Luong: new top state(s) h (B, [T,] H) -> attentional vector h~ = tanh(W_c [c; h]), weights, context c."""
        context, weights = self.attention(h, enc["memory"], enc["proj"], enc["mask"])
        return torch.tanh(self.combine(torch.cat([context, h], dim=-1))), weights, context

    def _predict(self, feats: torch.Tensor, gate_in: torch.Tensor | None, weights: torch.Tensor,
                 enc: State) -> torch.Tensor:
        """Output features -> next-token scores: the output layer's logits, or with copy the
        log-probabilities of the pointer-generator mixture (see ``base``: both are logits)."""
        logits = self.output(feats)
        if self.copy_gate is None or gate_in is None:
            return logits
        return copy_log_probs(logits, self.copy_gate(gate_in), weights, enc["src"])

    def _rnn(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The decoder RNN over (B, T, in); states are kept batch-first (B, L, H) for search."""
        hidden = state["h"].transpose(0, 1).contiguous()
        if self.is_lstm:
            out, (h, c) = self.rnn(x, (hidden, state["c"].transpose(0, 1).contiguous()))
            return out, {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}
        out, h = self.rnn(x, hidden)
        return out, {"h": h.transpose(0, 1)}
