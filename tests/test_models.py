"""The model interface: teacher-forced and step-wise decoding agree, padding is inert,
teacher forcing ratios 1 and 0 mean what they say, greedy search is batch-independent."""

from __future__ import annotations

import pytest
import torch

from seq2seqkit.config import TeacherForcingConfig, model_config
from seq2seqkit.data.dataset import pad_sources
from conftest import assert_padding_is_inert, batch, step_by_step
from seq2seqkit.data.tokenizers import BOS, EOS
from seq2seqkit.models import build_model
from seq2seqkit.search import greedy_search, max_lengths
from seq2seqkit.teacher_forcing import decode_with_teacher_forcing, teacher_forcing_ratio

VARIANTS = [
    dict(cell="gru"),
    dict(cell="lstm"),
    dict(cell="gru", bidirectional=False, feed_context=False),
    dict(cell="lstm", encoder_layers=2, decoder_layers=2, tie_embeddings=True),
]


def make(**kw) -> torch.nn.Module:
    cfg = model_config(embed_dim=16, hidden_size=24, dropout=0.0, **kw)
    torch.manual_seed(0)
    return build_model(cfg, src_vocab=20, tgt_vocab=15).eval()


SRC = [[5, 6, 7, 8, 9], [10, 11]]
TGT = [[4, 5, 6], [7, 8, 9, 10, 11, 12]]


@pytest.mark.parametrize("kw", VARIANTS)
def test_forward_equals_step_by_step(kw):
    model = make(**kw)
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        full = model(src, lens, tin)
        steps, _ = step_by_step(model, src, lens, tin)
    assert full.shape == (2, tin.size(1), 15)
    torch.testing.assert_close(full, steps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS)
def test_padding_does_not_change_the_loss(kw):
    model = make(**kw)
    assert_padding_is_inert(model, SRC, TGT)


def test_teacher_forcing_ratio_one_is_the_teacher_forced_pass():
    model = make()
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        torch.testing.assert_close(decode_with_teacher_forcing(model, src, lens, tin, 1.0)[0], model(src, lens, tin))
        # With ratio 1 the gold inputs matter: other gold tokens, other logits.
        other = tin.clone()
        other[:, 1] = 3 + (other[:, 1] % 7)
        assert not torch.allclose(decode_with_teacher_forcing(model, src, lens, other, 1.0)[0], model(src, lens, tin))


def test_teacher_forcing_ratio_zero_feeds_own_greedy_predictions():
    model = make()
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        free = decode_with_teacher_forcing(model, src, lens, tin, 0.0)[0]
        # Gold tokens after BOS are never looked at ...
        scrambled = tin.clone()
        scrambled[:, 1:] = torch.randint(4, 15, scrambled[:, 1:].shape)
        torch.testing.assert_close(decode_with_teacher_forcing(model, src, lens, scrambled, 0.0)[0], free)
        # ... and the inputs are exactly the argmax of the step before (= greedy decoding).
        enc = model.encode(src, lens)
        state, prev, manual = model.init_state(enc), tin[:, 0], []
        for _ in range(tin.size(1)):
            out = model.decode_step(prev, enc, state)
            manual.append(out.logits)
            state, prev = out.state, out.logits.argmax(-1)
        torch.testing.assert_close(free, torch.stack(manual, 1))


def test_intermediate_ratio_mixes_gold_and_predictions():
    model = make()
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        torch.manual_seed(3)
        a = decode_with_teacher_forcing(model, src, lens, tin, 0.5)[0]
        torch.manual_seed(3)
        b = decode_with_teacher_forcing(model, src, lens, tin, 0.5)[0]
        tf = model(src, lens, tin)
        free = decode_with_teacher_forcing(model, src, lens, tin, 0.0)[0]
    torch.testing.assert_close(a, b)  # reproducible under a seed
    assert not torch.allclose(a, tf) and not torch.allclose(a, free)
    # The first step always sees BOS, whatever the ratio.
    torch.testing.assert_close(a[:, 0], tf[:, 0])


def test_teacher_forcing_schedules():
    ratio = lambda step, **kw: teacher_forcing_ratio(TeacherForcingConfig(**kw), step)  # noqa: E731
    assert ratio(5000, ratio=0.8) == 0.8
    assert ratio(0, ratio=1.0, schedule="linear", decay_steps=100) == 1.0
    assert ratio(50, ratio=1.0, schedule="linear", decay_steps=100) == pytest.approx(0.5)
    assert ratio(500, ratio=1.0, schedule="linear", decay_steps=100, min_ratio=0.2) == pytest.approx(0.2)
    assert ratio(10, ratio=1.0, schedule="exponential", decay=0.9) == pytest.approx(0.9**10)
    assert ratio(10**6, ratio=1.0, schedule="exponential", decay=0.9, min_ratio=0.3) == 0.3
    k = 100.0
    sig = [ratio(s, ratio=1.0, schedule="inverse_sigmoid", sigmoid_k=k) for s in (0, 200, 500, 1000, 5000)]
    assert sig[0] == pytest.approx(k / (k + 1))
    assert sig[2] == pytest.approx(k / (k + torch.e**5))
    assert all(a > b for a, b in zip(sig, sig[1:]))


@pytest.mark.parametrize("kw", VARIANTS[:2])
def test_greedy_search_is_batch_independent_and_capped(kw):
    model = make(**kw)
    sources = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
    src, lens = pad_sources(sources)
    together = greedy_search(model, src, lens, max_len_a=1.0, max_len_b=2)
    caps = max_lengths(lens, 1.0, 2).tolist()
    assert caps == [7, 4, 9]
    for i, s in enumerate(sources):
        s1, l1 = pad_sources([s])
        alone = greedy_search(model, s1, l1, max_len_a=1.0, max_len_b=2)[0]
        assert alone.tokens == together[i].tokens
        assert alone.score == pytest.approx(together[i].score, abs=1e-4)
        assert len(together[i].tokens) <= caps[i]
        assert EOS not in together[i].tokens and BOS not in together[i].tokens


def test_greedy_score_is_the_sum_of_token_log_probs():
    model = make()
    src, lens = pad_sources([[5, 6, 7]])
    hyp = greedy_search(model, src, lens, max_len_a=1.0, max_len_b=3)[0]
    seq = [BOS] + hyp.tokens
    with torch.no_grad():
        logp = torch.log_softmax(model(src, lens, torch.tensor([seq])), -1)[0]
    ends_with_eos = len(hyp.tokens) < 6  # stopped by EOS rather than by the cap
    targets = hyp.tokens + ([EOS] if ends_with_eos else [])
    expected = sum(logp[t, tok].item() for t, tok in enumerate(targets))
    assert hyp.score == pytest.approx(expected, abs=1e-4)


def test_dropout_drops_p_and_rescales_the_rest():
    """The uniform-noise dropout behaves as inverted dropout: a share p zeroed, the rest scaled
    by 1/(1-p) (so the mean is kept), the gradient flows through the same mask, identity in eval
    mode and reproducible from the seed."""
    from seq2seqkit.models.dropout import Dropout

    drop, x = Dropout(0.3), torch.ones(200_000, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.3) < 0.005
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    assert drop.eval()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
