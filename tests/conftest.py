"""Shared fixtures: tiny generated tasks, so tests need no downloaded data."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from seq2seqkit.config import Config, from_dict
from seq2seqkit.data.dataset import make_batch


def write_reverse_task(directory: Path, n: int, seed: int, alphabet: str = "abcdef",
                       min_len: int = 1, max_len: int = 5) -> tuple[Path, Path]:
    """Pairs ``s -> reversed(s)`` over a small alphabet, as two line-aligned files."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        src.append(" ".join(s))
        tgt.append(" ".join(reversed(s)))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "src.txt").write_text("\n".join(src) + "\n", encoding="utf-8")
    (directory / "tgt.txt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return directory / "src.txt", directory / "tgt.txt"


def tiny_config(tmp_path: Path, **training) -> Config:
    """A small word-level RNN config on the reverse task in ``tmp_path``."""
    train = write_reverse_task(tmp_path / "train", 2000, seed=1)
    dev = write_reverse_task(tmp_path / "dev", 200, seed=2)
    raw = {
        "output_dir": str(tmp_path / "model"),
        "data": {"train": {"src": str(train[0]), "tgt": str(train[1])},
                 "dev": {"src": str(dev[0]), "tgt": str(dev[1])}},
        "tokenizer": {"src": {"kind": "word"}, "tgt": {"kind": "word"}},
        "model": {"family": "rnn", "cell": "gru", "embed_dim": 32, "hidden_size": 96, "dropout": 0.0},
        "training": {"epochs": 30, "batch_tokens": 400, "lr": 0.01, "log_every": 20,
                     "checkpoint_every": 50, "num_threads": 2, **training},
        "evaluation": {"metrics": ["exact", "wer", "per"]},
    }
    return from_dict(raw)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def batch(sources: list[list[int]], targets: list[list[int]]):
    """(src, src_lens, tgt_in, tgt_out) tensors for hand-written id sequences."""
    b = make_batch(sources, targets)
    return b.src, b.src_lens, b.tgt_in, b.tgt_out


def train_reverse_and_score(cfg: Config, tmp_path: Path) -> tuple[float, float]:
    """Train ``cfg`` through the normal entry point; (exact match % on a fresh test set, seconds)."""
    import time

    from seq2seqkit.evaluate import evaluate_model, load_eval_set
    from seq2seqkit.training import Trainer
    from seq2seqkit.translate import Translator

    start = time.perf_counter()
    Trainer(cfg).train()
    elapsed = time.perf_counter() - start
    test = write_reverse_task(tmp_path / "test", 300, seed=3)
    scores, _ = evaluate_model(Translator.load(cfg.output_dir), load_eval_set(*test), ["exact"])
    print(f"{cfg.model.family} reverse task: {scores.values['exact']:.1f}% exact in {elapsed:.1f}s")
    return scores.values["exact"], elapsed
