"""The Transformer family: the KV-cached step equals the parallel teacher-forced pass and the
uncached recomputation, padding is inert, beams can be reordered, attention weights are a
distribution over real source tokens, embeddings are shared when asked, and it learns."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from seq2seqkit.config import model_config
from seq2seqkit.data.dataset import pad_sources
from conftest import assert_padding_is_inert, batch, step_by_step, tiny_config, train_reverse_and_score
from seq2seqkit.data.tokenizers import BOS, EOS
from seq2seqkit.models import build_model, select
from seq2seqkit.models.transformer import TransformerSeq2Seq
from seq2seqkit.search import greedy_search, max_lengths


VARIANTS = [
    dict(norm="pre", positions="sinusoidal"),
    dict(norm="post", positions="sinusoidal"),
    dict(norm="pre", positions="learned"),
    dict(norm="post", positions="learned", tie_embeddings=True),
]
SRC = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
TGT = [[4, 5, 6], [7, 8, 9, 10, 11, 12], [13]]


def make(src_vocab: int = 20, tgt_vocab: int = 15, **kw) -> TransformerSeq2Seq:
    kw = {"embed_dim": 16, "heads": 2, "ff_dim": 32, "encoder_layers": 2, "decoder_layers": 2,
          "dropout": 0.1, "attention_dropout": 0.1, **kw}
    cfg = model_config(family="transformer", **kw)
    torch.manual_seed(0)
    model = build_model(cfg, src_vocab=src_vocab, tgt_vocab=tgt_vocab)
    assert isinstance(model, TransformerSeq2Seq)
    return model.eval()


def cached_logits(model, src, lens, tin) -> torch.Tensor:
    return step_by_step(model, src, lens, tin)[0]


@pytest.mark.parametrize("kw", VARIANTS)
def test_forward_equals_cached_step_by_step(kw):
    model = make(**kw)
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        full = model(src, lens, tin)
        steps = cached_logits(model, src, lens, tin)
    assert full.shape == (3, tin.size(1), 15)
    torch.testing.assert_close(full, steps, rtol=1e-5, atol=1e-5)


def test_cache_grows_by_one_position_per_step():
    model = make()
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        enc = model.encode(src, lens)
        state = model.init_state(enc)
        assert enc["cross"][0][0].shape == (3, 2, src.size(1), 8)  # projected once, batch-first
        for t in range(3):
            state = model.decode_step(tin[:, t], enc, state).state
    assert state["pos"].tolist() == [3, 3, 3]
    assert len(state["self"]) == 2
    for k, v in state["self"]:
        assert k.shape == v.shape == (3, 2, 3, 8)


def manual_uncached_greedy(model, src, lens, max_len_a, max_len_b):
    """Greedy search written out over ``decode_step_uncached`` (whole prefix recomputed)."""
    caps = max_lengths(lens, max_len_a, max_len_b).tolist()
    with torch.no_grad():
        enc = model.encode(src, lens)
        prefix = torch.full((src.size(0), 1), BOS)
        tokens, scores, done = [[] for _ in caps], [0.0] * len(caps), [False] * len(caps)
        for step in range(max(caps)):
            logp = F.log_softmax(model.decode_step_uncached(prefix, enc), -1)
            lp, best = logp.max(-1)
            for i in range(len(caps)):
                if done[i]:
                    continue
                scores[i] += lp[i].item()
                if best[i].item() == EOS:
                    done[i] = True
                    continue
                tokens[i].append(best[i].item())
                done[i] = step + 1 >= caps[i]
            prefix = torch.cat([prefix, best[:, None]], 1)
    return tokens, scores


@pytest.mark.parametrize("kw", VARIANTS[:2])
def test_cached_and_uncached_greedy_agree(kw):
    model = make(tgt_vocab=20, **kw)
    sources = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [4]]
    src, lens = pad_sources(sources)
    hyps = greedy_search(model, src, lens, max_len_a=1.5, max_len_b=4)
    tokens, scores = manual_uncached_greedy(model, src, lens, 1.5, 4)
    assert max(len(h.tokens) for h in hyps) >= 3  # the comparison covers several steps
    assert [h.tokens for h in hyps] == tokens
    assert [h.score for h in hyps] == pytest.approx(scores, abs=1e-4)


@pytest.mark.parametrize("kw", VARIANTS[:2])
def test_padding_does_not_change_the_loss(kw):
    model = make(**kw)
    assert_padding_is_inert(model, SRC, TGT)


def test_attention_weights_are_a_distribution_over_real_tokens():
    model = make()
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        enc = model.encode(src, lens)
        state = model.init_state(enc)
        assert model.decode_step(tin[:, 0], enc, state).attention is None  # off by default: no cost
        for layer in (-1, 0):
            out = model.decode_step(tin[:, 0], enc, state, layer)
            assert out.attention.shape == (3, src.size(1))
            real = enc["mask"]
            torch.testing.assert_close(out.attention.sum(-1), torch.ones(3))
            assert (out.attention[~real] == 0).all() and (out.attention[real] > 0).all()
        # Asking for weights does not change the logits.
        plain = model.decode_step(tin[:, 0], enc, state)
        torch.testing.assert_close(plain.logits, out.logits)
        # Greedy search collects one row per output step (EOS included), when asked.
        hyp = greedy_search(model, src[:1], lens[:1], max_len_a=1.0, max_len_b=2, attention_layer=-1)[0]
        assert hyp.attention is not None and hyp.attention.size(1) == src.size(1)
        assert greedy_search(model, src[:1], lens[:1], max_len_a=1.0, max_len_b=2)[0].attention is None


def test_reordered_cache_continues_like_a_fresh_decode():
    model = make()
    src, lens, tin, _ = batch(SRC, TGT)
    idx = torch.tensor([2, 0, 0, 1])  # drop, repeat and reorder rows, as beam search does
    with torch.no_grad():
        enc = model.encode(src, lens)
        state = model.init_state(enc)
        for t in range(3):
            state = model.decode_step(tin[:, t], enc, state).state
        enc, state, continued = select(enc, idx), select(state, idx), []
        for t in range(3, tin.size(1)):
            out = model.decode_step(tin[idx, t], enc, state)
            continued.append(out.logits)
            state = out.state
        fresh = cached_logits(model, src[idx], lens[idx], tin[idx])
    torch.testing.assert_close(torch.stack(continued, 1), fresh[:, 3:], rtol=1e-5, atol=1e-5)


def test_tied_and_shared_embeddings_are_one_parameter():
    model = make(src_vocab=15, tgt_vocab=15, tie_embeddings=True, share_embeddings=True)
    table = model.decoder.embed.table.weight
    assert model.output.weight is table and model.encoder.embed.table.weight is table
    separate = make(src_vocab=15, tgt_vocab=15)
    assert model.num_parameters() == separate.num_parameters() - 2 * table.numel()
    # A round trip through the state dict keeps them one parameter.
    again = make(src_vocab=15, tgt_vocab=15, tie_embeddings=True, share_embeddings=True)
    again.load_state_dict(model.state_dict())
    assert again.output.weight is again.encoder.embed.table.weight
    with pytest.raises(ValueError, match="share_embeddings"):
        make(src_vocab=20, tgt_vocab=15, share_embeddings=True)


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="heads do not divide model.embed_dim"):
        make(embed_dim=16, heads=3)
    model = make(positions="learned", max_positions=6)
    src, lens = pad_sources([[5] * 8])
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(src, lens)


def test_reverse_task_is_learned(tmp_path):
    """A 2+2-layer Transformer learns to reverse short strings (>= 95% exact match)."""
    cfg = tiny_config(tmp_path, max_steps=600, validate_every=100)
    cfg.model = model_config(family="transformer", embed_dim=64, heads=4, ff_dim=128, encoder_layers=2, decoder_layers=2,
                             dropout=0.1, attention_dropout=0.1)
    tc = cfg.training
    tc.lr, tc.lr_schedule, tc.warmup_steps, tc.label_smoothing = 2e-3, "inverse_sqrt", 50, 0.1
    tc.early_stopping.metric = "exact"  # keep the checkpoint with the best dev exact match
    tc.num_threads = 1
    exact, _ = train_reverse_and_score(cfg, tmp_path)
    assert exact >= 95.0
