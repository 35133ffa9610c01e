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
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..data.tokenizers import PAD
from ..errors import ConfigError
from .attention import AdditiveAttention, Attention, DotAttention, GeneralAttention
from .base import Seq2SeqModel, State, StepOutput
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
    "context"[, "cell"]}``; decoder state: ``{"h": (B, L, H)[, "c"][, "feed": (B, H)]}``."""

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> None:
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

    # -- interface -------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> State:
        memory, h, c = self.encoder(src, src_lens)
        mask = torch.arange(src.size(1), device=src.device) < src_lens.to(src.device).unsqueeze(1)
        enc = {"memory": memory, "proj": self.attention.precompute(memory), "mask": mask, "context": h}
        if c is not None:
            enc["cell"] = c
        return enc

    def init_state(self, enc: State) -> State:
        state = bridged_state(self.bridge_h, self.bridge_c, enc)
        if self.input_feeding:
            state["feed"] = enc["context"].new_zeros(enc["context"].size(0), self.hidden)
        return state

    @property
    def attention_layers(self) -> int:
        return 1

    def decode_step(self, prev: torch.Tensor, enc: State, state: State, attention_layer: int | None = None) -> StepOutput:
        feats, state, weights = self._step(self.dropout(self.embed(prev)), enc, state)
        return StepOutput(self.output(feats), state, None if attention_layer is None else weights)

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(src, src_lens, tgt_in)[0]

    def forward_with_attention(
        self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits (B, T, V) and attention weights (B, T, S)."""
        enc = self.encode(src, src_lens)
        state = self.init_state(enc)
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E), embedded once for all steps
        if self.luong and not self.input_feeding:  # attention never reaches the RNN: all steps at once
            out, _ = self._rnn(emb, state)
            feats, weights = self._attend(out, enc)
        else:  # each step's input depends on the previous step's attention
            steps = []
            for t in range(emb.size(1)):
                f, state, w = self._step(emb[:, t], enc, state)
                steps.append((f, w))
            feats, weights = (torch.stack(x, dim=1) for x in zip(*steps))
        return self.output(feats), weights  # the output layer also runs once for all steps

    # -- decoder pieces --------------------------------------------------------------------
    def _step(self, emb: torch.Tensor, enc: State, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One target position: (B, E) input embedding -> output features, new state, (B, S) weights."""
        if self.luong:
            x = torch.cat([emb, state["feed"]], dim=-1) if self.input_feeding else emb
            out, new_state = self._rnn(x.unsqueeze(1), state)
            feats, weights = self._attend(out.squeeze(1), enc)
            if self.input_feeding:
                new_state["feed"] = feats
            return feats, new_state, weights
        context, weights = self.attention(state["h"][:, -1], enc["memory"], enc["proj"], enc["mask"])
        out, new_state = self._rnn(torch.cat([emb, context], dim=-1).unsqueeze(1), state)
        return torch.cat([out.squeeze(1), context, emb], dim=-1), new_state, weights

    def _attend(self, h: torch.Tensor, enc: State) -> tuple[torch.Tensor, torch.Tensor]:
        """Luong: new top state(s) h (B, [T,] H) -> attentional vector h~ = tanh(W_c [c; h]) and weights."""
        context, weights = self.attention(h, enc["memory"], enc["proj"], enc["mask"])
        return torch.tanh(self.combine(torch.cat([context, h], dim=-1))), weights

    def _rnn(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The decoder RNN over (B, T, in); states are kept batch-first (B, L, H) for search."""
        hidden = state["h"].transpose(0, 1).contiguous()
        if self.is_lstm:
            out, (h, c) = self.rnn(x, (hidden, state["c"].transpose(0, 1).contiguous()))
            return out, {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}
        out, h = self.rnn(x, hidden)
        return out, {"h": h.transpose(0, 1)}
