"""The plain RNN encoder-decoder (Sutskever et al. 2014; Cho et al. 2014).

The encoder reads the whole input and its final state becomes one fixed-size **context
vector**; the decoder starts from it (and, with ``feed_context``, sees it again at every step,
as in Cho et al.). Nothing else of the input reaches the decoder: that bottleneck is what
attention (``attention_rnn.py``) removes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import RecurrentConfig, RNNConfig
from ..data.tokenizers import PAD
from .base import Seq2SeqModel, State, StepOutput, merge_rows
from .dropout import Dropout

RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNEncoder(nn.Module):
    """Embeddings + (bi)GRU/LSTM over the padded source, padding skipped via packing."""

    def __init__(self, cfg: RecurrentConfig, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.embed_dim, padding_idx=PAD)
        self.dropout = Dropout(cfg.dropout)
        self.rnn = RNNS[cfg.cell](
            cfg.embed_dim, cfg.hidden_size, num_layers=cfg.encoder_layers, batch_first=True,
            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.encoder_layers > 1 else 0.0,
        )
        self.is_lstm = cfg.cell == "lstm"
        self.out_dim = cfg.hidden_size * (2 if cfg.bidirectional else 1)

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> states (B, S, out_dim), final hidden of the top layer (B, out_dim), and its
        LSTM cell (B, out_dim) or None. Directions are concatenated."""
        x = self.dropout(self.embed(src))
        packed = pack_padded_sequence(x, src_lens.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        h, c = final if self.is_lstm else (final, None)
        return out, self._top(h), (self._top(c) if c is not None else None)

    def _top(self, final: torch.Tensor) -> torch.Tensor:
        # final: (layers * dirs, B, H) -> top layer's directions side by side: (B, dirs * H)
        dirs = 2 if self.rnn.bidirectional else 1
        return torch.cat(list(final[-dirs:]), dim=-1)


class Bridge(nn.Module):
    """Maps the context vector to the decoder's initial state, one slice per decoder layer."""

    def __init__(self, in_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.layers, self.hidden = layers, hidden
        self.proj = nn.Linear(in_dim, hidden * layers)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, layers, hidden)
        return torch.tanh(self.proj(ctx)).view(ctx.size(0), self.layers, self.hidden)


def bridged_state(bridge_h: Bridge, bridge_c: Bridge | None, enc: State) -> dict[str, torch.Tensor]:
    """The decoder's first state: the bridged context vector (and LSTM cell), batch-first."""
    state = {"h": bridge_h(enc["context"])}
    if bridge_c is not None:
        state["c"] = bridge_c(enc["cell"])
    return state


class OutputLayer(nn.Module):
    """Decoder features -> vocabulary logits through a small 'deep output' layer whose width is
    the embedding size, so that the projection can share the target embedding matrix."""

    def __init__(self, feat_dim: int, embed: nn.Embedding, dropout: float, tie: bool) -> None:
        super().__init__()
        self.pre = nn.Linear(feat_dim, embed.embedding_dim)
        self.dropout = Dropout(dropout)
        self.proj = nn.Linear(embed.embedding_dim, embed.num_embeddings)
        if tie:
            self.proj.weight = embed.weight

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.tanh(self.pre(self.dropout(feats))))


class RNNSeq2Seq(Seq2SeqModel):
    """Encoder -> context vector -> decoder. Decoder state: ``{"h": (B, L, H)[, "c": ...]}``."""

    def __init__(self, cfg: RNNConfig, src_vocab: int, tgt_vocab: int) -> None:
        super().__init__()
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.feed_context = cfg.feed_context
        self.is_lstm = cfg.cell == "lstm"
        self.encoder = RNNEncoder(cfg, src_vocab)
        ctx = self.encoder.out_dim
        self.bridge_h = Bridge(ctx, cfg.hidden_size, cfg.decoder_layers)
        self.bridge_c = Bridge(ctx, cfg.hidden_size, cfg.decoder_layers) if self.is_lstm else None
        self.embed = nn.Embedding(tgt_vocab, cfg.embed_dim, padding_idx=PAD)
        self.dropout = Dropout(cfg.dropout)
        in_dim = cfg.embed_dim + (ctx if cfg.feed_context else 0)
        self.rnn = RNNS[cfg.cell](
            in_dim, cfg.hidden_size, num_layers=cfg.decoder_layers, batch_first=True,
            dropout=cfg.dropout if cfg.decoder_layers > 1 else 0.0,
        )
        feat = cfg.hidden_size + (ctx + cfg.embed_dim if cfg.feed_context else 0)
        self.output = OutputLayer(feat, self.embed, cfg.dropout, cfg.tie_embeddings)

    # -- interface -------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> State:
        _, h, c = self.encoder(src, src_lens)
        enc = {"context": h}
        if c is not None:
            enc["cell"] = c
        return enc

    def init_state(self, enc: State) -> State:
        return bridged_state(self.bridge_h, self.bridge_c, enc)

    def merge(self, enc: State, state: State, new_enc: State, new_state: State) -> tuple[State, State]:
        return merge_rows(enc, new_enc), merge_rows(state, new_state)  # one vector per row: no source axis

    @property
    def attention_layers(self) -> int:
        return 0  # one context vector: no attention over source positions

    def decode_step(self, prev: torch.Tensor, enc: State, state: State, attention_layer: int | None = None) -> StepOutput:
        logits, new_state = self._decode(prev.unsqueeze(1), enc, state)
        return StepOutput(logits.squeeze(1), new_state, None)

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        enc = self.encode(src, src_lens)
        logits, _ = self._decode(tgt_in, enc, self.init_state(enc))
        return logits

    # -- the decoder over T >= 1 steps in one cuDNN/oneDNN call ------------------------------
    def _decode(self, tokens: torch.Tensor, enc: State, state: State) -> tuple[torch.Tensor, State]:
        emb = self.dropout(self.embed(tokens))  # (B, T, E)
        x = emb
        if self.feed_context:
            ctx = enc["context"].unsqueeze(1).expand(-1, tokens.size(1), -1)
            x = torch.cat([emb, ctx], dim=-1)
        hidden = state["h"].transpose(0, 1).contiguous()  # RNNs want (L, B, H)
        if self.is_lstm:
            out, (h, c) = self.rnn(x, (hidden, state["c"].transpose(0, 1).contiguous()))
            new_state = {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}
        else:
            out, h = self.rnn(x, hidden)
            new_state = {"h": h.transpose(0, 1)}
        feats = torch.cat([out, ctx, emb], dim=-1) if self.feed_context else out
        return self.output(feats), new_state
