"""The copy mechanism (pointer-generator) and coverage of See et al. 2017 (models/copy.py)."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from seq2seqkit.cli import main
from seq2seqkit.config import from_dict, model_config
from seq2seqkit.data.dataset import make_batch
from seq2seqkit.errors import ConfigError
from seq2seqkit.models import build_model
from seq2seqkit.models.copy import copy_log_probs, coverage_losses, step_coverage_loss
from seq2seqkit.models.ensemble import Ensemble
from seq2seqkit.search import beam_search, greedy_search, sample_search
from seq2seqkit.generation_controls import GenerationControls
from seq2seqkit.teacher_forcing import decode_with_teacher_forcing
from seq2seqkit.training import Trainer, token_loss

# The task: a source of 4-7 frequent filler tokens with one rare word somewhere among them; the
# target is a frequent marker, then that word. 1,500 rare words, 600 training pairs: each rare
# word occurs in training 0-3 times (most once), the test uses only words seen in training.
MARK, FILLER, FIRST_RARE, RARE = 5, list(range(6, 16)), 16, 1500
VOCAB = FIRST_RARE + RARE
SMALL = {"attention": dict(family="attention", embed_dim=32, hidden_size=64, dropout=0.0),
         "transformer": dict(family="transformer", embed_dim=32, heads=2, ff_dim=64, dropout=0.0,
                             attention_dropout=0.0)}
LR = {"attention": 0.01, "transformer": 0.005}


def rare_word_task(n: int, rng: random.Random, words: list[int]) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for _ in range(n):
        src = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        word = rng.choice(words)
        src.insert(rng.randint(0, len(src)), word)
        pairs.append((src, [MARK, word]))
    return pairs


TRAIN = rare_word_task(600, random.Random(0), list(range(FIRST_RARE, VOCAB)))
SEEN = sorted({w for _, (_, w) in TRAIN})
TEST = rare_word_task(60, random.Random(1), SEEN)


def train_ids(family: str, copy: bool, steps: int = 100, **extra) -> torch.nn.Module:
    """Train on TRAIN with the functions training uses (teacher forcing, token loss, coverage)."""
    torch.manual_seed(0)
    model = build_model(model_config(**SMALL[family], copy_attn=copy, **extra), VOCAB, VOCAB)
    opt = torch.optim.Adam(model.parameters(), lr=LR[family])
    rng = random.Random(0)
    for _ in range(steps):
        b = make_batch(*zip(*rng.sample(TRAIN, 32)))
        logits, aux = decode_with_teacher_forcing(model, b.src, b.src_lens, b.tgt_in, 1.0)
        loss = token_loss(logits, b.tgt_out) + sum(v[b.tgt_out != 0].sum() for v in aux.values())
        opt.zero_grad()
        (loss / b.n_tokens).backward()
        opt.step()
    return model.eval()


def exact_match(hyps, pairs=TEST) -> float:
    return sum(h.tokens == tgt for h, (_, tgt) in zip(hyps, pairs)) / len(pairs)


def eval_batch():
    b = make_batch(*zip(*TEST))
    return b.src, b.src_lens


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models on a shared machine: one thread is faster than several, and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.nn.Module]:
    return {family: train_ids(family, copy=True, coverage=family == "attention") for family in SMALL}


@pytest.mark.parametrize("family", list(SMALL))
def test_copy_gets_rare_words_right_where_the_same_model_without_copy_does_not(family, trained):
    src, lens = eval_batch()
    with_copy = exact_match(greedy_search(trained[family], src, lens))
    without = exact_match(greedy_search(train_ids(family, copy=False), src, lens))
    assert with_copy >= 0.9 and without <= 0.2, (with_copy, without)


def test_every_search_and_the_ensemble_run_on_copy_models(trained):
    src, lens = eval_batch()
    models = [trained["attention"], trained["transformer"], Ensemble([trained["attention"], trained["transformer"]])]
    controls = GenerationControls(no_repeat_ngram_size=2, min_len=2, repetition_penalty=1.2)
    for model in models:
        assert exact_match(greedy_search(model, src, lens, controls=controls)) >= 0.9
        assert exact_match([nb[0] for nb in beam_search(model, src, lens, beam_size=3, controls=controls)]) >= 0.9
        gen = torch.Generator().manual_seed(0)
        samples = sample_search(model, src, lens, top_k=5, generator=gen, controls=controls)
        assert exact_match(samples) >= 0.8  # a confident model samples what it would choose
        assert all(len(h.tokens) >= 2 for h in samples)  # min_len holds
    hyp = greedy_search(models[1], src, lens, attention_layer=-1)[0]  # heatmap weights still available
    assert hyp.attention is not None and torch.allclose(hyp.attention.sum(-1), torch.ones(len(hyp.tokens) + 1))


def copy_models():
    for family in SMALL:
        for extra in ({}, {"coverage": True}):
            yield family, extra
    yield "attention", {"coverage": True, "coverage_feature": True, "cell": "lstm"}
    yield "attention", {"attention": "luong_general", "coverage": True}
    yield "attention", {"attention": "luong_general", "input_feeding": False}


def small_batch():
    return make_batch([[20, 21, 6, 7, 30], [40, 8]], [[5, 21, 30, 99], [40]])


@pytest.mark.parametrize("family,extra", list(copy_models()))
def test_mixture_is_a_distribution_and_steps_agree_with_the_teacher_forced_pass(family, extra):
    model = build_model(model_config(**SMALL[family], copy_attn=True, **extra), 100, 100).eval()
    b = small_batch()
    scores, losses = model.forward_with_losses(b.src, b.src_lens, b.tgt_in)
    torch.testing.assert_close(scores.exp().sum(-1), torch.ones(scores.shape[:2]))
    enc = model.encode(b.src, b.src_lens)
    state = model.init_state(enc)
    for t in range(b.tgt_in.size(1)):
        out = model.decode_step(b.tgt_in[:, t], enc, state)
        torch.testing.assert_close(out.logits, scores[:, t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(F.log_softmax(out.logits, -1), out.logits, atol=1e-5, rtol=0)  # already normalised
        assert out.losses.keys() == losses.keys() == ({"coverage"} if extra.get("coverage") else set())
        for k in losses:
            torch.testing.assert_close(out.losses[k], losses[k][:, t], atol=1e-5, rtol=1e-5)
        state = out.state
    if losses:
        assert (losses["coverage"][:, 0] == 0).all()  # nothing is covered before the first step


def test_mixture_gradients_are_finite_and_bf16_mixes_in_fp32():
    model = build_model(model_config(**SMALL["transformer"], copy_attn=True, coverage=True), 100, 100)
    b = small_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, losses = model.forward_with_losses(b.src, b.src_lens, b.tgt_in)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores.exp().sum(-1), torch.ones(scores.shape[:2]))
    (token_loss(scores, b.tgt_out, label_smoothing=0.1) + losses["coverage"].sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)  # tokens absent from the source: no NaN
    assert model.copy_gate.proj.weight.grad.abs().sum() > 0


def test_copy_log_probs_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25, 1e-9]]))
    attention = torch.tensor([[0.2, 0.8, 0.0]])  # the third source position is padding
    src = torch.tensor([[2, 3, 0]])
    gate = torch.logit(torch.tensor([0.75]))
    p = copy_log_probs(logits, gate, attention, src).exp()
    expected = 0.75 * torch.softmax(logits, -1) + 0.25 * torch.tensor([[0.0, 0.0, 0.2, 0.8]])
    torch.testing.assert_close(p, expected)


def test_copy_log_probs_match_the_mixture_in_probability_space_with_repeated_tokens():
    """Values and gradients equal the plain formula, with a token at several source positions."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 9, generator=gen, requires_grad=True)
    gate = torch.randn(2, 3, generator=gen, requires_grad=True)
    scores = torch.randn(2, 3, 5, generator=gen).masked_fill(torch.tensor([False] * 4 + [True]), -torch.inf)
    scores.requires_grad_(True)
    src = torch.tensor([[4, 7, 4, 4, 0], [5, 6, 7, 8, 0]])
    weights = torch.rand(2, 3, 9, generator=gen)

    def mixture(formula):
        out = formula(logits, gate, scores.softmax(-1), src)
        grads = torch.autograd.grad((out * weights).sum(), [logits, gate, scores])
        return out, grads

    def reference(logits, gate, attention, src):
        copy = torch.zeros_like(logits).scatter_add(-1, src.unsqueeze(1).expand_as(attention), attention)
        p_gen = torch.sigmoid(gate).unsqueeze(-1)
        return torch.log(p_gen * logits.softmax(-1) + (1 - p_gen) * copy)

    (got, got_grads), (want, want_grads) = mixture(copy_log_probs), mixture(reference)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def test_coverage_loss_is_zero_first_and_positive_when_attention_repeats():
    moves_on = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    repeats = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])
    assert coverage_losses(moves_on).tolist() == [[0.0, 0.0, 0.0]]
    assert coverage_losses(repeats).tolist() == [[0.0, 1.0, 1.0]]
    cov = torch.zeros(1, 3)
    for t, expected in enumerate([0.0, 1.0, 1.0]):
        assert step_coverage_loss(repeats[:, t], cov).item() == expected
        cov = cov + repeats[:, t]


def test_cached_and_uncached_transformer_decoding_agree_with_copy():
    model = build_model(model_config(**SMALL["transformer"], copy_attn=True, coverage=True, decoder_layers=2),
                        100, 100).eval()
    b = small_batch()
    enc = model.encode(b.src, b.src_lens)
    state = model.init_state(enc)
    for t in range(b.tgt_in.size(1)):
        out = model.decode_step(b.tgt_in[:, t], enc, state)
        torch.testing.assert_close(out.logits, model.decode_step_uncached(b.tgt_in[:, : t + 1], enc),
                                   atol=1e-5, rtol=1e-5)
        state = out.state


@pytest.mark.parametrize("family", list(SMALL))
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_scheduled_sampling_trains_copy_models(family, mode):
    model = build_model(model_config(**SMALL[family], copy_attn=True, coverage=True), 100, 100)
    b = small_batch()
    scores, losses = decode_with_teacher_forcing(model, b.src, b.src_lens, b.tgt_in, 0.5, mode)
    assert scores.shape == (2, b.tgt_in.size(1), 100) and losses["coverage"].shape == b.tgt_in.shape
    torch.testing.assert_close(scores.exp().sum(-1), torch.ones(scores.shape[:2]))
    (token_loss(scores, b.tgt_out) + losses["coverage"].sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------- config, training, CLI
def words(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def copy_config(tmp_path, **model):
    lines = [json.dumps({"src": words(s), "tgt": words(t)}) for s, t in TRAIN[:200]]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = {
        "output_dir": str(tmp_path / "model"),
        "data": {"train": {"path": str(tmp_path / "train.jsonl")}, "dev": {"path": str(tmp_path / "train.jsonl")},
                 "dev_max_examples": 20},
        "tokenizer": {"joint": True, "src": {"kind": "word"}, "tgt": {"kind": "word"}},
        "model": {**SMALL["attention"], "copy_attn": True, **model},
        "training": {"max_steps": 6, "batch_tokens": 300, "log_every": 2, "num_threads": 1, "exposure_bias": False},
        "evaluation": {"metrics": ["exact"]},
    }
    return raw


def test_training_logs_coverage_and_a_copy_model_is_saved_loaded_and_applied(tmp_path):
    cfg = from_dict(copy_config(tmp_path, coverage=True, coverage_feature=True), overrides=["training.coverage_weight=0.5"])
    Trainer(cfg).train()
    logged = [json.loads(x) for x in (tmp_path / "model" / "train_log.jsonl").read_text().splitlines()]
    train = [e for e in logged if e["kind"] == "train"]
    assert train and all(e["coverage"] >= 0 for e in train) and train[-1]["coverage"] > 0
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(words(s) for s, _ in TEST[:5]) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    assert main(["-q", "generate", "-m", cfg.output_dir, "-i", str(inputs), "-o", str(out), "--beam", "2"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5


def test_ctranslate2_export_of_a_copy_transformer_is_refused(tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    raw = copy_config(tmp_path)
    raw["model"] = {**SMALL["transformer"], "copy_attn": True}
    raw["training"]["max_steps"] = 1
    cfg = from_dict(raw)
    Trainer(cfg).train()
    capsys.readouterr()
    assert main(["-q", "export", "--format", "ctranslate2", cfg.output_dir, str(tmp_path / "ct2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot represent the copy mechanism" in err[0]
    assert not (tmp_path / "ct2").exists()


@pytest.mark.parametrize("change,key", [
    ({"tokenizer": {"joint": False}}, "model.copy_attn"),
    ({"model": {"family": "rnn"}}, "model.copy_attn"),
    ({"model": {"copy_attn": False, "coverage": True}}, "model.coverage"),
    ({"model": {"coverage": True, "coverage_feature": True, "attention": "luong_dot"}}, "model.coverage_feature"),
    ({"model": {"coverage_feature": True}}, "model.coverage_feature"),
    ({"training": {"coverage_weight": 2.0}}, "training.coverage_weight"),
])
def test_config_refusals_name_the_key(tmp_path, change, key):
    raw = copy_config(tmp_path)
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(ConfigError, match=rf"config: {key}: "):
        from_dict(raw)
