"""Shared fixtures: tiny generated tasks, so tests need no downloaded data."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from seq2seqkit.config import Config, from_dict


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
