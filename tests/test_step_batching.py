"""Step-level (continuous) batching: inputs that join a running batch between decoding steps
(``PathDecoder.admit`` -> the model's ``merge``) and leave it when done decode exactly as each
does alone, for every family, copy models, coverage and an ensemble; generation controls keep
each row's own history; a general merge of two batches at any steps keeps every row's logits."""

from __future__ import annotations

import pytest
import torch

from seq2seqkit.data.dataset import pad_sources
from seq2seqkit.data.tokenizers import BOS, EOS
from seq2seqkit.generation_controls import GenerationControls
from seq2seqkit.models import build_model
from seq2seqkit.models.base import select
from seq2seqkit.models.ensemble import Ensemble
from seq2seqkit.search import PathDecoder, greedy_search, max_lengths, most_probable, sampler

from conftest import small_model
from test_search import random_sources, same

FAMILIES = {
    "rnn": dict(family="rnn", cell="gru"),
    "rnn-lstm-2": dict(family="rnn", cell="lstm", encoder_layers=2, decoder_layers=2),
    "bahdanau": dict(family="attention"),
    "luong-feeding": dict(family="attention", cell="lstm", attention="luong_general"),
    "transformer": dict(family="transformer", decoder_layers=2, attention_dropout=0.0),
    "transformer-learned-post": dict(family="transformer", positions="learned", max_positions=40, norm="post",
                                     attention_dropout=0.0),
    "copy-attention": dict(family="attention", copy_attn=True, coverage=True, coverage_feature=True),
    "copy-transformer": dict(family="transformer", copy_attn=True, coverage=True, attention_dropout=0.0),
}
VOCAB = 20  # one vocabulary for both sides (copy models need it)


def model_of(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "ensemble":
        return Ensemble([model_of("rnn", 1), model_of("bahdanau", 2), model_of("copy-transformer", 3)]).eval()
    return build_model(small_model(**FAMILIES[name]), VOCAB, VOCAB).eval()


NAMES = [*FAMILIES, "ensemble"]
SOURCES = random_sources(10, seed=7)
SCHEDULE = ((0, 3), (1, 1), (4, 2), (5, 1), (9, 3))  # (step, inputs admitted before it)


def staggered(decoder: PathDecoder, sources: list[list[int]], schedule=SCHEDULE) -> list:
    """Admit ``sources`` in groups before the steps ``schedule`` says (so rows join a batch
    whose rows are at different steps and have other source lengths); each one's hypothesis."""
    out, step, at, plan = {}, 0, 0, list(schedule)
    while plan or decoder:
        while plan and plan[0][0] <= step:
            n = plan.pop(0)[1]
            src, lens = pad_sources(sources[at : at + n])
            decoder.admit(src, lens, list(range(at, at + n)))
            at += n
        if decoder:
            out.update(decoder.step())
        step += 1
    assert at == len(sources)
    return [out[i] for i in range(len(sources))]


def alone(model, sources, **kw) -> list:
    return [greedy_search(model, *pad_sources([s]), **kw)[0] for s in sources]


def layer(model) -> int | None:
    return -1 if model.attention_layers else None


@pytest.mark.parametrize("name", NAMES)
def test_rows_joining_and_leaving_at_any_step_decode_as_each_alone(name):
    model = model_of(name)
    got = staggered(PathDecoder(model, most_probable, 1.0, 4, attention_layer=layer(model)), SOURCES)
    want = alone(model, SOURCES, max_len_a=1.0, max_len_b=4, attention_layer=layer(model))
    steps = {len(h.tokens) + (h.tokens != []) for h in want}
    assert len(steps) > 2  # rows leave at different steps
    for g, w in zip(got, want):
        same(g, w)


@pytest.mark.parametrize("name", ["transformer", "copy-attention", "ensemble"])
def test_generation_controls_keep_each_rows_own_history(name):
    model = model_of(name)
    controls = GenerationControls(no_repeat_ngram_size=2, min_len=3, repetition_penalty=1.5)
    got = staggered(PathDecoder(model, most_probable, 1.5, 6, controls=controls), SOURCES)
    want = alone(model, SOURCES, max_len_a=1.5, max_len_b=6, controls=controls)
    for g, w in zip(got, want):
        same(g, w)
    plain = alone(model, SOURCES, max_len_a=1.5, max_len_b=6)
    assert any(g.tokens != p.tokens for g, p in zip(got, plain))  # the controls did change outputs


@pytest.mark.parametrize("name", ["bahdanau", "copy-transformer"])
def test_sampling_in_a_running_batch(name):
    model = model_of(name)
    # top-k 1 leaves one token to draw: the sampling path, through every merge, is greedy search.
    got = staggered(PathDecoder(model, sampler(top_k=1), 1.0, 4), SOURCES)
    for g, w in zip(got, alone(model, SOURCES, max_len_a=1.0, max_len_b=4)):
        same(g, w)
    # Real draws: valid outputs within their caps, scored with the model's log-probabilities.
    gen = torch.Generator().manual_seed(3)
    drawn = staggered(PathDecoder(model, sampler(temperature=1.5, generator=gen), 1.0, 4), SOURCES)
    caps = max_lengths(pad_sources(SOURCES)[1], 1.0, 4).tolist()
    for h, cap in zip(drawn, caps):
        assert len(h.tokens) <= cap and all(0 <= t < VOCAB and t != EOS for t in h.tokens)
        assert -1e9 < h.score < 0
    assert [h.tokens for h in drawn] != [h.tokens for h in got]


def test_dropped_rows_leave_and_the_others_go_on():
    model = model_of("copy-transformer")
    decoder = PathDecoder(model, most_probable, 1.0, 6)
    src, lens = pad_sources(SOURCES[:4])
    decoder.admit(src, lens, [0, 1, 2, 3])
    out = dict(decoder.step())
    decoder.drop(lambda tag: tag in (0, 2))
    src, lens = pad_sources(SOURCES[4:6])
    decoder.admit(src, lens, [4, 5])
    while decoder:
        out.update(decoder.step())
    assert sorted(out) == [1, 3, 4, 5]
    for i in (1, 3, 4, 5):
        same(out[i], alone(model, [SOURCES[i]], max_len_a=1.0, max_len_b=6)[0])


def run_steps(model, enc, state, tokens: torch.Tensor) -> tuple[list[torch.Tensor], object]:
    """Feed ``tokens`` (B, T) one step at a time: each step's logits, and the state after."""
    logits = []
    for t in range(tokens.size(1)):
        out = model.decode_step(tokens[:, t], enc, state)
        logits.append(out.logits)
        state = out.state
    return logits, state


@pytest.mark.parametrize("name", NAMES)
def test_merging_two_batches_at_any_steps_keeps_every_rows_logits(name):
    """The interface's ``merge`` on its own: batches a (3 rows, 4 steps in) and b (2 rows, 1 step
    in, other source lengths) merged, then decoded on; rows then leave and a third batch joins.
    Each row's logits stay those of its own batch."""
    model = model_of(name)
    g = torch.Generator().manual_seed(0)
    parts = {}
    for key, (n, done) in {"a": (3, 4), "b": (2, 1), "c": (2, 0)}.items():
        src, lens = pad_sources(random_sources(n, seed=ord(key), max_len=9 if key == "b" else 4))
        tokens = torch.randint(4, VOCAB, (n, 12), generator=g)
        tokens[:, 0] = BOS
        tokens[0, 2] = EOS  # any token, EOS included: the model is only fed
        enc = model.encode(src, lens)
        parts[key] = (enc, model.init_state(enc), tokens, done)
    with torch.no_grad():
        ref = {k: run_steps(model, enc, state, tok)[0] for k, (enc, state, tok, _) in parts.items()}
        (ea, sa, ta, da), (eb, sb, tb, db), (ec, sc, tc, _) = parts["a"], parts["b"], parts["c"]
        _, sa = run_steps(model, ea, sa, ta[:, :da])
        _, sb = run_steps(model, eb, sb, tb[:, :db])
        enc, state = model.merge(ea, sa, eb, sb)
        for t in range(3):  # a at steps 4-6, b at steps 1-3
            out = model.decode_step(torch.cat([ta[:, da + t], tb[:, db + t]]), enc, state)
            torch.testing.assert_close(out.logits, torch.cat([ref["a"][da + t], ref["b"][db + t]]), rtol=1e-5, atol=1e-5)
            state = out.state
        keep = torch.tensor([1, 3])  # a's second row (at step 7) and b's first (at step 4) stay
        enc, state = select(enc, keep), select(state, keep)
        enc, state = model.merge(enc, state, ec, sc)  # c joins at its step 0
        for t in range(3):  # a at steps 7-9, b at 4-6, c at 0-2
            prev = torch.cat([ta[1:2, da + 3 + t], tb[0:1, db + 3 + t], tc[:, t]])
            out = model.decode_step(prev, enc, state)
            want = torch.cat([ref["a"][da + 3 + t][1:2], ref["b"][db + 3 + t][0:1], ref["c"][t]])
            torch.testing.assert_close(out.logits, want, rtol=1e-5, atol=1e-5)
            state = out.state
