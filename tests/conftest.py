"""Shared fixtures: tiny generated tasks, so tests need no downloaded data."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from seq2seqkit.config import Config, ModelConfig, from_dict, model_config
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
        "model": tiny_model("rnn", cell="gru").model_dump(),
        "training": {"epochs": 30, "batch_tokens": 400, "lr": 0.01, "log_every": 20,
                     "checkpoint_every": 50, "num_threads": 2, **training},
        "evaluation": {"metrics": ["exact", "wer", "per"]},
    }
    return from_dict(raw)


def tiny_model(family: str, **keys) -> ModelConfig:
    """The model section of :func:`tiny_config` (32-dim embeddings, no dropout, 96 hidden units
    in the RNN families) for ``family``; ``keys`` add to or override it. Assign it to
    ``cfg.model`` to switch a tiny config's family."""
    sizes = {} if family == "transformer" else {"hidden_size": 96}
    return model_config(**{"family": family, "embed_dim": 32, "dropout": 0.0, **sizes, **keys})


def small_model(family: str, **keys) -> ModelConfig:
    """A small model section of ``family`` for fast tests: 16-dim embeddings, no dropout, and 24
    hidden units (RNN families) or 2 heads of a 32-dim feed-forward (Transformer); ``keys`` add to
    or override these."""
    sizes = {"heads": 2, "ff_dim": 32} if family == "transformer" else {"hidden_size": 24}
    return model_config(**{"family": family, "embed_dim": 16, "dropout": 0.0, **sizes, **keys})


@pytest.fixture(autouse=True, scope="session")
def _shard_cache(tmp_path_factory):
    """The tests' training runs cache their tokenized data (data/shards.py) in a temporary
    directory, not in the user's cache; prepared data sets (datasets/) stay shared with it."""
    real = Path(os.environ.get("S2S_CACHE_DIR") or Path.home() / ".cache" / "seq2seqkit")
    cache = tmp_path_factory.mktemp("cache")
    (real / "datasets").mkdir(parents=True, exist_ok=True)
    (cache / "datasets").symlink_to(real / "datasets")
    patch = pytest.MonkeyPatch()
    patch.setenv("S2S_CACHE_DIR", str(cache))
    yield cache
    patch.undo()


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


def step_by_step(model, src: torch.Tensor, lens: torch.Tensor, tin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher-forced decoding one ``decode_step`` at a time (as search runs a model): (B, T, V)
    logits and (B, T, S) weights of its first attention (None if the model has none)."""
    enc = model.encode(src, lens)
    state = model.init_state(enc)
    logits, attn = [], []
    layer = 0 if model.attention_layers else None
    for t in range(tin.size(1)):
        out = model.decode_step(tin[:, t], enc, state, layer)
        logits.append(out.logits)
        attn.append(out.attention)
        state = out.state
    return torch.stack(logits, 1), None if attn[0] is None else torch.stack(attn, 1)


def assert_padding_is_inert(model, sources: list[list[int]], targets: list[list[int]]) -> None:
    """Extra PAD columns do not change the loss of a sentence, and in a batch the
    per-sentence losses add up (so padding in a neighbour does not leak in either)."""
    from seq2seqkit.data.tokenizers import PAD
    from seq2seqkit.training import token_loss

    def loss(b):
        return token_loss(model(b[0], b[1], b[2]), b[3])

    first = batch(sources[:1], targets[:1])
    pad = lambda x: torch.cat([x, torch.full((x.size(0), 4), PAD)], dim=1)  # noqa: E731
    with torch.no_grad():
        alone = loss(first)
        padded = loss((pad(first[0]), first[1], pad(first[2]), pad(first[3])))
        both = loss(batch(sources[:2], targets[:2]))
        second = loss(batch(sources[1:2], targets[1:2]))
    torch.testing.assert_close(alone, padded)
    torch.testing.assert_close(both, alone + second, rtol=1e-5, atol=1e-5)
    assert alone.item() > 0


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    """The one ``s2s: error:`` line a refused command printed on stderr (and nothing else)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("s2s: error: "), err
    return err[0]
