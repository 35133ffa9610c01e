"""Model families behind one interface (see ``base.py``); ``build_model`` picks one by config."""

from __future__ import annotations

from ..config import ModelConfig
from .base import Seq2SeqModel, StepOutput, map_batch, select
from .attention_rnn import AttentionRNNSeq2Seq
from .rnn import RNNSeq2Seq
from .transformer import TransformerSeq2Seq

FAMILIES: dict[str, type[Seq2SeqModel]] = {
    "rnn": RNNSeq2Seq,
    "attention": AttentionRNNSeq2Seq,
    "transformer": TransformerSeq2Seq,
}


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> Seq2SeqModel:
    return FAMILIES[cfg.family](cfg, src_vocab, tgt_vocab)


__all__ = ["FAMILIES", "Seq2SeqModel", "StepOutput", "build_model", "map_batch", "select"]
