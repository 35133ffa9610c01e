"""Generation controls (no_repeat_ngram_size, min_len, repetition_penalty): the processors do
what their formulas say, and every search (greedy, beam, sampling) obeys them on a model that
loves repeating and stopping early, on small random models of each family and on an ensemble;
scores are the sums of the processed log-probabilities; batches do not leak; the CLI flags and
the Python API reach the config."""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import seq2seqkit
from seq2seqkit.cli import apply_search_flags, build_parser, main
from seq2seqkit.config import Config, SearchConfig, from_dict
from seq2seqkit.data.dataset import pad_sources
from seq2seqkit.data.tokenizers import BOS, EOS, PAD
from seq2seqkit.errors import ConfigError
from seq2seqkit.generation_controls import (
    GenerationControls, apply_controls, banned_ngram_mask, repetition_penalty,
)
from seq2seqkit.models.base import Seq2SeqModel, StepOutput
from seq2seqkit.search import controls_of, search
from seq2seqkit.training import Trainer

from conftest import tiny_config, write_reverse_task
from test_ensemble import three_families
from test_search import random_sources, same

V = 12  # PAD UNK BOS EOS + words 4..11


class Parrot(Seq2SeqModel):
    """Fixed next-token scores that depend only on the previous token (plus a small per-source
    shift, so sentences differ): after BOS it says 4, then loops 4 5 4 5 ...; ``eos`` makes EOS
    the favourite after 5, so the unconstrained output is "4 5" and stops."""

    def __init__(self, eos: float = -4.0, seed: int = 0) -> None:
        super().__init__()
        self.src_vocab, self.tgt_vocab = 20, V
        gen = torch.Generator().manual_seed(seed)
        table = torch.randn(V, V, generator=gen)
        table[:, PAD] = table[:, BOS] = -1e4  # never output (as a trained model learns)
        table[:, EOS] = -3.0
        table[BOS, 4] = table[4, 5] = table[5, 4] = 4.0
        table[5, EOS] = eos
        self.register_buffer("table", table)
        self.shift = torch.randn(self.src_vocab, V, generator=gen) * 0.3

    def encode(self, src, src_lens):
        real = src.ne(PAD).unsqueeze(2)  # padding must not shift a sentence's scores
        return {"shift": (self.shift[src] * real).sum(1) / src_lens.unsqueeze(1)}  # (B, V)

    def init_state(self, enc):
        return {"dummy": torch.zeros(enc["shift"].size(0), 1)}

    @property
    def attention_layers(self):
        return 0

    def decode_step(self, prev, enc, state, attention_layer=None):
        return StepOutput(self.table[prev] + enc["shift"], state, None)

    def forward(self, src, src_lens, tgt_in):
        return self.table[tgt_in] + self.encode(src, src_lens)["shift"].unsqueeze(1)


SEARCHES = {"greedy": SearchConfig(), "beam": SearchConfig(beam_size=4, nbest=4),
            "sampling": SearchConfig(sample=True, nbest=3)}


def decode(model, sources, cfg: SearchConfig, seed: int = 0, **controls) -> list[list[list[int]]]:
    """Each sentence's outputs (the n-best list's tokens) under ``cfg`` plus ``controls``."""
    cfg = cfg.model_copy(update={"max_len_a": 0.0, "max_len_b": 16, **controls})
    return [[h.tokens for h in hyps] for hyps in decode_hyps(model, sources, cfg, seed)]


def decode_hyps(model, sources, cfg, seed: int = 0):
    src, lens = pad_sources(sources)
    return search(model, src, lens, cfg, generator=torch.Generator().manual_seed(seed))


def repeated_ngrams(tokens: list[int], n: int) -> int:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams))


def repeats(outputs, n: int = 1) -> int:
    return sum(repeated_ngrams(t, n) for hyps in outputs for t in hyps)


SOURCES = random_sources(6, seed=11, max_len=6)


# ------------------------------------------------------------------------------ processors
def test_repetition_penalty_is_the_ctrl_formula():
    scores = torch.tensor([[2.0, -1.0, 0.5, -3.0, 0.0], [-0.2, 1.5, -2.0, 4.0, -1.0]])
    history = torch.tensor([[0, 1, 1, 4], [3, 3, 2, 2]])  # repeats count once
    out = repetition_penalty(scores, history, 2.0)
    expected = scores.clone()
    for row, toks in enumerate(history.tolist()):
        for t in set(toks):
            s = scores[row, t].item()
            expected[row, t] = s / 2.0 if s > 0 else s * 2.0
    torch.testing.assert_close(out, expected)
    assert out[0, 2] == 0.5 and out[1, 0] == -0.2  # tokens not output are untouched
    logp = torch.randn(3, 7).log_softmax(-1)
    hist = torch.tensor([[4, 5], [6, 6], [4, 0]])
    for p in (0.5, 1.3):  # on log-probs (never positive) the penalty is a factor
        out = repetition_penalty(logp, hist, p)
        seen = torch.zeros_like(logp, dtype=torch.bool).scatter(1, hist, True)
        torch.testing.assert_close(out, torch.where(seen, logp * p, logp))
    assert repetition_penalty(logp, hist, 1.0) is logp


def test_banned_ngrams_are_the_continuations_of_the_last_n_minus_1_tokens():
    history = torch.tensor([[4, 5, 6, 4, 5], [7, 8, 7, 8, 9], [4, 4, 4, 4, 4]])
    assert banned_ngram_mask(history, 3, V).nonzero().tolist() == [[0, 6], [2, 4]]
    assert banned_ngram_mask(history, 2, V).nonzero().tolist() == [[0, 6], [2, 4]]  # row 1 ends in 9, seen once
    assert banned_ngram_mask(history, 1, V)[1].nonzero().flatten().tolist() == [7, 8, 9]
    assert not banned_ngram_mask(history, 6, V).any()  # no 6-gram yet


def test_min_len_blocks_only_eos_and_a_row_with_nothing_left_may_end():
    logp = torch.randn(2, V).log_softmax(-1)
    ctl = GenerationControls(min_len=3)
    out = apply_controls(logp, None, 2, ctl)
    assert out[:, EOS].eq(-math.inf).all()
    keep = torch.arange(V) != EOS
    torch.testing.assert_close(out[:, keep], logp[:, keep])
    torch.testing.assert_close(apply_controls(logp, None, 3, ctl), logp)
    # Every word already output once and no repeats allowed: EOS is all that is left.
    every = torch.tensor([[t for t in range(V) if t != EOS]] * 2)
    out = apply_controls(logp, every, every.size(1), GenerationControls(no_repeat_ngram_size=1, min_len=50))
    assert out[:, EOS].tolist() == logp[:, EOS].tolist()
    assert out[:, keep].eq(-math.inf).all()


def test_config_validates_the_controls_and_the_api_can_set_them():
    cfg = Config()
    assert controls_of(cfg.search) == GenerationControls()  # off by default
    cfg.search.no_repeat_ngram_size = 3
    cfg.search.min_len = 5
    cfg.search.repetition_penalty = 1.2
    assert controls_of(cfg.search) == GenerationControls(3, 5, 1.2)
    for key, bad in (("no_repeat_ngram_size", -1), ("min_len", -2), ("repetition_penalty", 0.0),
                     ("min_len", 5000)):  # over max_output_tokens (1024)
        with pytest.raises(ValidationError):
            setattr(cfg.search, key, bad)
    with pytest.raises(ConfigError, match=r"search.min_len: 30 cannot exceed max_output_tokens \(20\)"):
        from_dict({"search": {"min_len": 30, "max_output_tokens": 20}})
    with pytest.raises(ConfigError, match="search.repetition_penalty"):
        from_dict({"search": {"repetition_penalty": -1}})


# -------------------------------------------------------------------------- every search
@pytest.mark.parametrize("name", SEARCHES)
def test_no_repeat_ngram_size_removes_every_repeat(name):
    model, cfg = Parrot(), SEARCHES[name]
    free = decode(model, SOURCES, cfg)
    for n in (1, 2, 3):
        assert repeats(free, n) > 0  # the parrot repeats every n-gram
        banned = decode(model, SOURCES, cfg, no_repeat_ngram_size=n)
        assert repeats(banned, n) == 0
        assert sum(len(t) for hyps in banned for t in hyps) >= sum(len(hyps) for hyps in banned) * n  # not silenced


@pytest.mark.parametrize("name", SEARCHES)
def test_min_len_lengthens_outputs_that_stop_early(name):
    model, cfg = Parrot(eos=6.0), SEARCHES[name]
    free = decode(model, SOURCES, cfg)
    assert min(len(t) for hyps in free for t in hyps) < 5
    for min_len in (5, 20):  # 20 is over the cap max_len_b 16, which it lifts
        outputs = decode(model, SOURCES, cfg, min_len=min_len)
        assert min(len(t) for hyps in outputs for t in hyps) >= min_len
    capped = decode(model, SOURCES, cfg, min_len=20, max_output_tokens=20)
    assert max(len(t) for hyps in capped for t in hyps) <= 20
    if name == "greedy":  # the parrot says EOS as soon as it may (after a 5)
        assert all(len(t) in (5, 6) for hyps in decode(model, SOURCES, cfg, min_len=5) for t in hyps)


@pytest.mark.parametrize("name", SEARCHES)
def test_repetition_penalty_reduces_repeats(name):
    model, cfg = Parrot(), SEARCHES[name]
    counts = [repeats(decode(model, SOURCES, cfg, repetition_penalty=p)) for p in (1.0, 3.0, 10.0)]
    assert counts[0] > counts[1] > counts[2]
    assert repeats(decode(model, SOURCES, cfg, repetition_penalty=0.5)) >= counts[0]  # below 1: more repeats


@pytest.mark.parametrize("name", SEARCHES)
def test_scores_are_sums_of_the_processed_log_probs_of_each_hypothesis_own_history(name):
    """Replay every output token by token with its own history: search's score is the sum of
    the controlled log-probabilities (so beam search reordered each beam's history with it)."""
    model = Parrot(eos=1.0)
    cfg = SEARCHES[name].model_copy(update={"max_len_a": 0.0, "max_len_b": 12, "no_repeat_ngram_size": 2,
                                            "min_len": 3, "repetition_penalty": 1.7})
    ctl = controls_of(cfg)
    for source, hyps in zip(SOURCES, decode_hyps(model, SOURCES, cfg)):
        src, lens = pad_sources([source])
        for h in hyps:
            enc = model.encode(src, lens)
            total, ended = 0.0, len(h.tokens) < 12
            for step, tok in enumerate(h.tokens + ([EOS] if ended else [])):
                prev = torch.tensor([([BOS] + h.tokens)[step]])
                logp = F.log_softmax(model.decode_step(prev, enc, None).logits, -1)
                logp = apply_controls(logp, torch.tensor([h.tokens[:step]]), step, ctl)
                assert logp[0, tok] > -math.inf  # nothing banned was chosen
                total += logp[0, tok].item()
            assert h.score == pytest.approx(total, abs=1e-4)


def test_beam_size_1_with_controls_is_greedy_with_controls():
    model = Parrot(eos=1.0)
    controls = {"no_repeat_ngram_size": 2, "min_len": 4, "repetition_penalty": 1.5}
    greedy = decode_hyps(model, SOURCES, SearchConfig(**controls))
    beam = decode_hyps(model, SOURCES, SearchConfig(beam_size=1, length_penalty=0.0, **controls))
    for (g,), (b,) in zip(greedy, beam):
        same(g, b)


# ------------------------------------------------------- real families, ensemble, batching
CONTROLS = {"no_repeat_ngram_size": 2, "min_len": 6, "repetition_penalty": 1.3}


@pytest.mark.parametrize("name", SEARCHES)
def test_the_ensemble_of_three_families_obeys_the_controls(name):
    ens, cfg = three_families(), SEARCHES[name].model_copy(update={"max_len_a": 0.0, "max_len_b": 10})
    sources = random_sources(3, seed=12)
    free = decode(ens, sources, cfg)
    assert repeats(free, 2) > 0  # untrained models repeat themselves, so the ban binds
    for model in [*ens.members, ens]:  # each family alone, then all three as one
        outputs = decode(model, sources, cfg, **CONTROLS)
        assert repeats(outputs, 2) == 0
        assert min(len(t) for hyps in outputs for t in hyps) >= 6


@pytest.mark.parametrize("name", ["greedy", "beam"])
def test_a_sentence_decodes_the_same_alone_and_in_a_batch(name):
    cfg = SEARCHES[name].model_copy(update={**CONTROLS, "max_len_a": 0.0, "max_len_b": 10})
    sources = random_sources(4, seed=13)
    for model in (Parrot(eos=1.0), three_families()):
        batched = decode_hyps(model, sources, cfg)
        for source, hyps in zip(sources, batched):
            for a, b in zip(hyps, decode_hyps(model, [source], cfg)[0]):
                same(a, b)


# ------------------------------------------------------------------------------ command line
def flags(*argv: str, verb: str = "translate") -> argparse.Namespace:
    return build_parser().parse_args([verb, "-m", "MODEL", *argv])


@pytest.mark.parametrize("verb", ["translate", "evaluate"])
def test_flags_reach_the_config_and_bad_values_name_the_flag(verb):
    tr = SimpleNamespace(cfg=Config())
    apply_search_flags(tr, flags("--no-repeat-ngram-size", "3", "--min-len", "4", "--repetition-penalty", "1.2",
                                 verb=verb))
    assert controls_of(tr.cfg.search) == GenerationControls(3, 4, 1.2)
    for argv, flag in ((["--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size"),
                       (["--min-len", "-1"], "--min-len"),
                       (["--repetition-penalty", "0"], "--repetition-penalty"),
                       (["--min-len", "50", "--max-output-tokens", "10"], "--min-len"),
                       (["--max-output-tokens", "3"], "--max-output-tokens")):  # below the min_len 4 set above
        with pytest.raises(ConfigError, match=f"^{flag}: "):
            apply_search_flags(tr, flags(*argv, verb=verb))


def test_cli_and_api_decode_with_the_controls(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=3, validate_every=3, exposure_bias=False)
    cfg.data.dev_max_examples = 5
    Trainer(cfg).train()
    src, _ = write_reverse_task(tmp_path / "test", 30, seed=14, max_len=8)
    out = tmp_path / "out.txt"
    argv = ["-q", "translate", "-m", cfg.output_dir, "-i", str(src), "-o", str(out), "--max-output-tokens", "12"]
    assert main(argv) == 0
    free = [line.split() for line in out.read_text().splitlines()]
    assert repeats([free]) > 0  # a barely trained model repeats itself
    assert main([*argv, "--no-repeat-ngram-size", "1", "--min-len", "3", "--force"]) == 0
    cli = out.read_text().splitlines()
    assert repeats([[line.split() for line in cli]]) == 0 and min(len(line.split()) for line in cli) >= 3
    tr = seq2seqkit.load(cfg.output_dir)
    tr.cfg.search.max_output_tokens = 12
    tr.cfg.search.no_repeat_ngram_size = 1
    tr.cfg.search.min_len = 3
    assert tr.translate(src.read_text().splitlines()) == cli
