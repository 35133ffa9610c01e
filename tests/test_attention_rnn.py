"""The attention RNN family: the teacher-forced pass equals step-by-step decoding, attention
ignores padding, search exposes the weights, and the model learns the reverse task."""

from __future__ import annotations

import pytest
import torch

from seq2seqkit.config import model_config
from seq2seqkit.data.dataset import pad_sources
from seq2seqkit.errors import ConfigError
from seq2seqkit.evaluate import evaluate_model, load_eval_set
from seq2seqkit.models import build_model
from seq2seqkit.models.attention import AdditiveAttention, DotAttention, GeneralAttention
from seq2seqkit.search import beam_search, greedy_search
from seq2seqkit.training import Trainer
from seq2seqkit.translate import Translator

from conftest import assert_padding_is_inert, batch, step_by_step, tiny_config, write_reverse_task

# Each attention with each cell, input feeding on and off, plus deep / unidirectional / tied.
VARIANTS = [
    dict(attention="bahdanau", cell="gru"),
    dict(attention="bahdanau", cell="lstm", encoder_layers=2, decoder_layers=2, tie_embeddings=True),
    dict(attention="luong_dot", cell="gru", bidirectional=False, input_feeding=False),
    dict(attention="luong_dot", cell="lstm", bidirectional=False, input_feeding=True),
    dict(attention="luong_general", cell="gru", input_feeding=True, decoder_layers=2),
    dict(attention="luong_general", cell="lstm", input_feeding=False),
]
IDS = [",".join(f"{k}={v}" for k, v in kw.items()) for kw in VARIANTS]


def make(**kw) -> torch.nn.Module:
    cfg = model_config(family="attention", embed_dim=16, hidden_size=24, dropout=0.0, **kw)
    torch.manual_seed(0)
    return build_model(cfg, src_vocab=20, tgt_vocab=15).eval()




SRC = [[5, 6, 7, 8, 9], [10, 11]]  # lengths 6 and 3 with EOS: the second row has 3 padding columns
TGT = [[4, 5, 6], [7, 8, 9, 10, 11, 12]]


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_forward_equals_step_by_step(kw):
    model = make(**kw)
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        full, full_attn = model.forward_with_attention(src, lens, tin)
        steps, step_attn = step_by_step(model, src, lens, tin)
        torch.testing.assert_close(model(src, lens, tin), full)
    assert full.shape == (2, tin.size(1), 15) and full_attn.shape == (2, tin.size(1), src.size(1))
    torch.testing.assert_close(full, steps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full_attn, step_attn, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_attention_is_a_distribution_over_real_tokens(kw):
    model = make(**kw)
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        _, attn = model.forward_with_attention(src, lens, tin)  # (B, T, S)
    real = torch.arange(src.size(1)) < lens.unsqueeze(1)  # (B, S)
    assert not real[1].all()  # the batch does contain padding
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]))
    assert (attn.masked_select(~real.unsqueeze(1)) == 0).all()
    assert (attn.masked_select(real.unsqueeze(1)) > 0).all()


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_padding_does_not_change_the_loss(kw):
    model = make(**kw)
    assert_padding_is_inert(model, SRC, TGT)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_greedy_search_returns_attention(kw):
    model = make(**kw)
    sources = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
    src, lens = pad_sources(sources)
    hyps = greedy_search(model, src, lens, max_len_a=1.0, max_len_b=2, attention_layer=0)
    for i, (s, h) in enumerate(zip(sources, hyps)):
        assert h.attention is not None
        assert h.attention.shape[0] in (len(h.tokens), len(h.tokens) + 1)  # +1: the EOS step
        real = len(s) + 1  # with EOS; search may or may not crop the batch's padding columns
        assert h.attention.shape[1] in (real, src.size(1))
        torch.testing.assert_close(h.attention.sum(-1), torch.ones(h.attention.size(0)))
        assert (h.attention[:, real:] == 0).all()
        # Batch-independent: the same sentence alone gives the same tokens and weights.
        s1, l1 = pad_sources([s])
        alone = greedy_search(model, s1, l1, max_len_a=1.0, max_len_b=2, attention_layer=0)[0]
        assert alone.tokens == h.tokens
        torch.testing.assert_close(alone.attention, h.attention[:, :real], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS[1:3], ids=IDS[1:3])
def test_beam_search_reorders_the_attention_state(kw):
    model = make(**kw)
    sources = [[5, 6, 7, 8, 9], [10, 11]]
    src, lens = pad_sources(sources)
    beams = beam_search(model, src, lens, beam_size=3, max_len_a=1.0, max_len_b=2, nbest=2, attention_layer=0)
    for s, hyps in zip(sources, beams):
        assert len(hyps) == 2
        for h in hyps:
            assert h.attention is not None and h.attention.size(0) in (len(h.tokens), len(h.tokens) + 1)
            torch.testing.assert_close(h.attention.sum(-1), torch.ones(h.attention.size(0)))
            assert (h.attention[:, len(s) + 1 :] == 0).all()


def test_attention_modules_batched_form_equals_one_query_at_a_time():
    torch.manual_seed(0)
    keys = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    queries = torch.randn(2, 3, 8)
    for attn in (AdditiveAttention(8, 8, 6), DotAttention(8, 8), GeneralAttention(8, 8)):
        proj = attn.precompute(keys)
        ctx, w = attn(queries, keys, proj, mask)
        assert ctx.shape == (2, 3, 8) and w.shape == (2, 3, 5)
        for t in range(3):
            c1, w1 = attn(queries[:, t], keys, proj, mask)
            torch.testing.assert_close(c1, ctx[:, t])
            torch.testing.assert_close(w1, w[:, t])
    with pytest.raises(ValueError, match="general attention"):
        DotAttention(8, 16)


def test_luong_dot_with_a_wider_encoder_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="model.attention: luong_dot"):
        make(attention="luong_dot", bidirectional=True)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_learns_the_reverse_task(tmp_path, attention):
    cfg = tiny_config(tmp_path, max_steps=300, validate_every=100, num_threads=1)
    cfg.model = model_config(family="attention", attention=attention, embed_dim=32, hidden_size=96, dropout=0.0)  # the tiny sizes
    cfg.training.lr = 0.005  # at the tiny config's 0.01, Luong-general's dev loss turns up after 200 updates
    Trainer(cfg).train()
    translator = Translator.load(cfg.output_dir)
    data = load_eval_set(*write_reverse_task(tmp_path / "test", 300, seed=3))
    scores, _ = evaluate_model(translator, data, ["exact"])
    assert scores.values["exact"] >= 95
    # Reversal is a known alignment: output token i should mostly attend to source token n-1-i.
    aligned = total = 0
    for text, (hyp, *_) in zip(data.sources[:50], translator.nbest_hypotheses(data.sources[:50], attention_layer=0)):
        n = len(text.split())
        peaks = hyp.attention[:n].argmax(-1).tolist()
        aligned += sum(p == n - 1 - i for i, p in enumerate(peaks))
        total += n
    assert aligned / total >= 0.75
