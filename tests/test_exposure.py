"""The exposure-bias measure (eb_loss@p / eb_gap@p) and parallel scheduled sampling.

A stub model whose predictions are known checks exactly which decoder inputs are replaced and
what loss results; tiny real models check that parallel and step-by-step scheduled sampling
agree where both are defined to, and that only the second pass is trained."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from conftest import batch, tiny_config
from seq2seqkit.config import load_config, model_config
from seq2seqkit.data.dataset import make_batch
from seq2seqkit.data.tokenizers import BOS, EOS, PAD
from seq2seqkit.errors import ConfigError
from seq2seqkit.models import build_model
from seq2seqkit.models.base import Seq2SeqModel, StepOutput
from seq2seqkit.teacher_forcing import decode_with_teacher_forcing, mixed_pass, own_predictions, substitute, token_loss
from seq2seqkit.training import Trainer, load_for_resume
from seq2seqkit.validation import dev_losses, exposure_bias_sums

V = 12
NEXT = {BOS: 4, **{k: k + 1 for k in range(4, V - 1)}, V - 1: EOS, EOS: EOS, PAD: EOS, 1: EOS}
CONFIDENCE = 5.0


class Successor(Seq2SeqModel):
    """Predicts, from the input token at t alone, ``NEXT[token]`` with logit CONFIDENCE (all
    other logits 0), and records every ``tgt_in`` that ``forward`` is fed."""

    src_vocab = tgt_vocab = V
    attention_layers = 0

    def __init__(self) -> None:
        super().__init__()
        self.fed: list[torch.Tensor] = []
        self.table = torch.tensor([NEXT[k] for k in range(V)])

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return CONFIDENCE * torch.nn.functional.one_hot(self.table[tokens], V).float()

    def encode(self, src, src_lens):
        return {"src": src}

    def init_state(self, enc):
        return None

    def decode_step(self, prev, enc, state, attention_layer=None):
        return StepOutput(self._logits(prev), None, None)

    def forward(self, src, src_lens, tgt_in):
        self.fed.append(tgt_in.clone())
        return self._logits(tgt_in)


def position_loss(fed: int, gold: int) -> float:
    """The stub's cross-entropy for reference ``gold`` after input ``fed``."""
    log_z = math.log(math.exp(CONFIDENCE) + V - 1)
    return log_z - (CONFIDENCE if NEXT[fed] == gold else 0.0)


SOURCES = [[5, 6], [7]]
TARGETS = [[4, 9, 6, 7], [4, 5]]  # the stub gets 4 (after BOS), 5 (after 4), 7 (after 6) right


def test_own_predictions_are_aligned_with_the_inputs():
    b = make_batch(SOURCES, TARGETS)
    pred = own_predictions(Successor()(b.src, b.src_lens, b.tgt_in), b.tgt_in)
    # The prediction at input position t is the model's guess for the token at t (from t - 1);
    # BOS stays, padding stays PAD.
    assert b.tgt_in.tolist() == [[BOS, 4, 9, 6, 7], [BOS, 4, 5, PAD, PAD]]
    assert pred.tolist() == [[BOS, 4, 5, 10, 7], [BOS, 4, 5, PAD, PAD]]


def test_the_measure_replaces_exactly_the_drawn_positions_and_scores_each_against_its_reference():
    model, b = Successor(), make_batch(SOURCES, TARGETS)
    draws = torch.tensor([[0.0, 0.9, 0.1, 0.4, 0.6], [0.0, 0.3, 0.2, 0.1, 0.1]])
    tf, correct, sums = exposure_bias_sums(model, b, draws, [0.0, 0.35, 0.5, 1.0])
    fed = model.fed[1:]  # after the teacher-forced pass: one per rate
    assert fed[0].tolist() == b.tgt_in.tolist()  # p = 0: nothing replaced
    # p = 0.35: positions 2 (9 -> 5) and, in the second sentence, 1 and 2 (already right) are
    # replaced; BOS (draw 0.0) and padding (draws 0.1) never.
    assert fed[1].tolist() == [[BOS, 4, 5, 6, 7], [BOS, 4, 5, PAD, PAD]]
    assert fed[2].tolist() == [[BOS, 4, 5, 10, 7], [BOS, 4, 5, PAD, PAD]]
    assert fed[3].tolist() == [[BOS, 4, 5, 10, 7], [BOS, 4, 5, PAD, PAD]]
    gold = [[4, 9, 6, 7, EOS], [4, 5, EOS]]

    def expected(inputs):  # position by position: each input scored against its own reference
        return sum(position_loss(x, g) for row, refs in zip(inputs, gold) for x, g in zip(row, refs))

    assert tf == pytest.approx(expected(b.tgt_in.tolist()))
    for p, inputs in zip([0.0, 0.35, 0.5, 1.0], fed):
        assert sums[p] == pytest.approx(expected(inputs.tolist()))
    assert correct == 4  # 4 and 7 in the first sentence, 4 and 5 in the second
    # The measure at p = 0 is the teacher-forced loss exactly: its gap is 0 by definition.
    assert sums[0.0] == tf


def test_a_model_that_makes_no_mistakes_has_no_gap():
    model = Successor()
    b = make_batch([[5]], [[4, 5, 6, 7, 8, 9, 10, 11]])  # exactly the stub's chain: every guess right
    tf, correct, sums = exposure_bias_sums(model, b, torch.zeros(b.tgt_in.shape), [0.5, 1.0])
    assert correct == b.n_tokens and sums == {0.5: tf, 1.0: tf}


def _tiny_trainer(tmp_path: Path, **training) -> Trainer:
    cfg = tiny_config(tmp_path, num_threads=1, **training)
    cfg.training.teacher_forcing.ratio = 0.7
    return Trainer(cfg)


def test_validation_numbers_are_deterministic_and_use_no_global_rng(tmp_path):
    trainer = _tiny_trainer(tmp_path, max_steps=10)
    trainer.train()
    state = torch.get_rng_state()
    first = dev_losses(trainer.model, trainer.dev.pairs, trainer.cfg.training, trainer.device)
    torch.manual_seed(999)  # the global RNG plays no part
    assert dev_losses(trainer.model, trainer.dev.pairs, trainer.cfg.training, trainer.device) == first
    assert set(first) == {"loss", "ppl", "acc", "eb_loss@0.25", "eb_gap@0.25", "eb_loss@0.5", "eb_gap@0.5",
                          "eb_loss@1", "eb_gap@1"}
    assert first["eb_gap@1"] > 0  # an untrained model's own mistakes hurt it
    torch.set_rng_state(state)


def test_a_resumed_run_logs_the_same_validation_numbers(tmp_path):
    straight = _tiny_trainer(tmp_path / "a", max_steps=20, validate_every=10)
    straight.train()
    halves = _tiny_trainer(tmp_path / "b", max_steps=10, validate_every=10)
    halves.train()
    Trainer(load_for_resume(halves.out, ["training.max_steps=20"]), resume=True).train()

    def valid(d: Path):
        return [{k: v for k, v in e.items() if k != "time_s"}
                for e in map(json.loads, (d / "train_log.jsonl").read_text().splitlines()) if e["kind"] == "valid"]

    a, b = valid(straight.out), valid(halves.out)
    assert [e["step"] for e in a] == [10, 20] and a == b
    # Every entry says how long training had run, counted on across the resume.
    times = [json.loads(x)["time_s"] for x in (halves.out / "train_log.jsonl").read_text().splitlines()]
    assert times == sorted(times) and times[0] > 0


def test_exposure_bias_rates_are_checked_at_load():
    for bad, why in (("[]", "at least one rate"), ("[0]", "in (0, 1]"), ("[1.5]", "in (0, 1]"),
                     ("[0.5, 0.5]", "given twice")):
        with pytest.raises(ConfigError, match=re.escape(f"override 'training.exposure_bias_rates={bad}': ") + ".*" + re.escape(why)):
            load_config(None, [f"training.exposure_bias_rates={bad}"])
    assert load_config(None, ["training.exposure_bias_rates=[1, 0.1]"]).training.exposure_bias_rates == [0.1, 1.0]


def test_old_run_directories_resume_step_by_step(tmp_path):
    """A config.yaml saved before teacher_forcing.mode existed trained step by step: it resumes so."""
    trainer = _tiny_trainer(tmp_path, max_steps=2)
    trainer.close()
    path = trainer.out / "config.yaml"
    path.write_text(path.read_text().replace("    mode: parallel\n", ""))
    assert load_for_resume(trainer.out, []).training.teacher_forcing.mode == "sequential"
    assert load_config(None).training.teacher_forcing.mode == "parallel"


# ------------------------------------------------------------------ parallel scheduled sampling
FAMILIES = {
    "attention": dict(family="attention", embed_dim=16, hidden_size=24),
    "transformer": dict(family="transformer", embed_dim=16, heads=2, ff_dim=32, encoder_layers=2, decoder_layers=2,
                        attention_dropout=0.0),
    "rnn": dict(family="rnn", embed_dim=16, hidden_size=24),
}
SRC = [[5, 6, 7, 8, 9], [10, 11]]
TGT = [[4, 5, 6], [7, 8, 9, 10, 11, 12]]


def make(name: str) -> Seq2SeqModel:
    torch.manual_seed(0)
    return build_model(model_config(dropout=0.0, **FAMILIES[name]), src_vocab=20, tgt_vocab=15).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_parallel_and_sequential_agree_at_ratio_one(name):
    model = make(name)
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        par = decode_with_teacher_forcing(model, src, lens, tin, 1.0, "parallel")[0]
        seq = decode_with_teacher_forcing(model, src, lens, tin, 1.0, "sequential")[0]
    assert torch.equal(par, seq) and torch.equal(par, model(src, lens, tin))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7])
def test_parallel_and_sequential_agree_on_the_first_position(name, ratio):
    model = make(name)
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        torch.manual_seed(1)
        par = decode_with_teacher_forcing(model, src, lens, tin, ratio, "parallel")[0]
        seq = decode_with_teacher_forcing(model, src, lens, tin, ratio, "sequential")[0]
        tf = model(src, lens, tin)
    torch.testing.assert_close(par[:, 0], seq[:, 0], rtol=1e-5, atol=1e-5)  # fed BOS in both
    if ratio == 0.0:  # and position 1 is fed the argmax of position 0 in both
        torch.testing.assert_close(par[:, 1], seq[:, 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(par, tf)


@pytest.mark.parametrize("name", FAMILIES)
def test_parallel_feeds_the_mix_of_gold_and_teacher_forced_predictions(name):
    model = make(name)
    src, lens, tin, _ = batch(SRC, TGT)
    with torch.no_grad():
        torch.manual_seed(2)
        par = decode_with_teacher_forcing(model, src, lens, tin, 0.5, "parallel")[0]
        torch.manual_seed(2)
        replace = torch.rand(tin.shape) >= 0.5
        fed = substitute(tin, own_predictions(model(src, lens, tin), tin), replace)
        assert torch.equal(par, model(src, lens, fed))
    assert (fed[:, 0] == BOS).all() and (fed[tin == PAD] == PAD).all() and not torch.equal(fed, tin)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_flow_only_through_the_second_pass(name):
    model = make(name).train()
    calls: list[bool] = []
    model.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    src, lens, tin, tout = batch(SRC, TGT)
    replace = torch.tensor([[False, True, False, True, True, True, True]] * 2)
    logits, tf = mixed_pass(model, src, lens, tin, replace)
    assert calls == [False, True] and not tf.requires_grad
    token_loss(logits, tout).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # The same gradients as one ordinary pass over the mixed input, computed separately.
    model.zero_grad()
    fed = substitute(tin, own_predictions(tf, tin), replace)
    token_loss(model(src, lens, fed), tout).backward()
    assert got.keys() == {n for n, p in model.named_parameters() if p.grad is not None} and got
    for n, p in model.named_parameters():
        if n in got:
            torch.testing.assert_close(got[n], p.grad)


def test_training_uses_the_configured_mode(tmp_path, monkeypatch):
    import seq2seqkit.training as training

    seen = []
    real = training.decode_with_teacher_forcing
    monkeypatch.setattr(training, "decode_with_teacher_forcing",
                        lambda *a: seen.append(a[-1]) or real(*a))
    for mode in ("parallel", "sequential"):
        cfg = tiny_config(tmp_path / mode, max_steps=2, num_threads=1, exposure_bias=False)
        cfg.training.teacher_forcing.ratio = 0.5
        cfg.training.teacher_forcing.mode = mode
        Trainer(cfg).train()
    assert seen == ["parallel"] * 2 + ["sequential"] * 2
