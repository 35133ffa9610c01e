"""Distributed training on CPU (gloo), 2 processes started by torchrun (torch.distributed.run).

The runs share one small generated task (dropout 0, teacher forcing 1: no random draws, so a
run's arithmetic is fixed by its batches) and one reference: ``s2s train --nproc 2``. Against it:
one process accumulating 2 batches, a run stopped by SIGTERM to one process and resumed, and two
torchrun "machines" on loopback. Other runs have random draws (dropout, scheduled sampling:
resuming restores each process's RNG) or rank 0's validation decisions (plateau, early stopping).
The tests that start processes are marked slow (each start imports torch in three processes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seqkit.checkpoint import load_checkpoint
from seq2seqkit.config import dump_config, from_dict, load_config, read_config_file
from seq2seqkit.data.dataset import token_batches
from seq2seqkit.distributed import Group
from seq2seqkit.errors import ConfigError
from seq2seqkit.training import Trainer, load_for_resume

from conftest import write_reverse_task

STEPS = 30
ENV = {**os.environ, "PYTHONHASHSEED": "0"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TRAIN = ["-m", "seq2seqkit", "-q", "train"]


# ------------------------------------------------------------------------ the batch split
@pytest.mark.parametrize("world,accumulate", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2)])
def test_every_batch_is_trained_once_in_the_single_process_order(world, accumulate):
    """Rank r takes batches r, r+N, ... of each update; the updates of all ranks together take
    every batch of the epoch once, in order, and all ranks make the same number of updates."""
    n = 23
    start, seen, updates = 0, [], 0
    while start < n:
        shares = [Group(rank=r, world_size=world).share(n, start, accumulate) for r in range(world)]
        taken = {t for _, t in shares}
        assert len(taken) == 1
        taken_n = taken.pop()
        assert sorted(i for mine, _ in shares for i in mine) == list(range(start, start + taken_n))
        for r, (mine, _) in enumerate(shares):
            assert mine == list(range(start + r, start + taken_n, world))
        seen += range(start, start + taken_n)
        start += taken_n
        updates += 1
    assert seen == list(range(n))
    assert updates == Group(world_size=world).updates_per_epoch(n, accumulate) == -(-n // (world * accumulate))


def test_accumulate_steps_and_timeout_are_validated():
    with pytest.raises(ConfigError, match="training.accumulate_steps"):
        from_dict({"training": {"accumulate_steps": 0}})
    with pytest.raises(ConfigError, match="training.distributed_timeout_s"):
        from_dict({"training": {"distributed_timeout_s": 0}})


# ------------------------------------------------------------------------------- the runs
def _config(root: Path, dropout: float = 0.0, **training) -> Path:
    """A small reverse-task RNN run in ``root``; its config file."""
    train = write_reverse_task(root / "train", 700, seed=1)
    dev = write_reverse_task(root / "dev", 40, seed=2)
    raw = {
        "output_dir": str(root / "model"),
        "data": {"train": {"src": str(train[0]), "tgt": str(train[1])}, "dev": {"src": str(dev[0]), "tgt": str(dev[1])}},
        "tokenizer": {"src": {"kind": "word"}, "tgt": {"kind": "word"}},
        "model": {"family": "rnn", "cell": "gru", "embed_dim": 16, "hidden_size": 32, "dropout": dropout},
        "training": {"max_steps": STEPS, "batch_tokens": 140, "lr": 0.01, "log_every": 2, "validate_every": 10,
                     "checkpoint_every": 1000, "num_threads": 1, "exposure_bias": False, **training},
        "evaluation": {"metrics": ["exact"]},
    }
    path = root / "config.yaml"
    path.write_text(dump_config(from_dict(raw)))
    return path


def _log(model_dir: Path) -> list[dict]:
    """The training log without its clock and memory readings (complete lines only)."""
    lines = (model_dir / "train_log.jsonl").read_text().split("\n")[:-1]
    return [{k: v for k, v in json.loads(x).items() if k not in ("time_s", "tokens_per_s", "rss_peak_mib")} for x in lines]


def _last_step(model_dir: Path) -> int:
    try:
        return _log(model_dir)[-1]["step"]
    except (FileNotFoundError, IndexError):
        return 0


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(model_dir / "checkpoints" / "last.pt")["model"]


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of the training process of ``rank`` that the torchrun ``launcher`` started."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher:
                if f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                    return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"no process of rank {rank} under {launcher}")


def _start(args: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen(TORCHRUN + args, env=ENV, stdout=out.open("w"), stderr=subprocess.STDOUT)


def _wait_for_step(proc: subprocess.Popen, model_dir: Path, step: int) -> None:
    deadline = time.time() + 300
    while _last_step(model_dir) < step:
        assert proc.poll() is None, "the run ended before the step the test waits for"
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """``s2s train --nproc 2`` to the end: the model directory."""
    root = tmp_path_factory.mktemp("reference")
    subprocess.run([sys.executable, *TRAIN, "--nproc", "2", str(_config(root))], env=ENV, check=True,
                   capture_output=True, timeout=600)
    return root / "model"


@pytest.mark.slow
def test_two_processes_make_the_updates_of_one_process_accumulating_two_batches(reference, tmp_path):
    """2 processes x batch B == 1 process x 2 accumulated batches B, after STEPS updates that cross
    an epoch's end where the batch count is odd (there, rank 1 has no batch in the last update and
    joins with weight 0). Tolerance: 1e-6 absolute on every parameter (measured: bit for bit equal,
    since the scaling by processes / tokens is by a power of two and gloo sums two numbers)."""
    raw = {**read_config_file(reference.parent / "config.yaml"), "output_dir": str(tmp_path / "one")}
    cfg = from_dict(raw, overrides=["training.accumulate_steps=2"])
    trainer = Trainer(cfg)
    first_epoch = len(token_batches(trainer.train_data.src_lens, trainer.train_data.tgt_lens,
                                    cfg.training.batch_tokens, cfg.training.seed, 0))
    assert first_epoch % 2 == 1 and (first_epoch + 1) // 2 < STEPS  # the padded update is exercised
    trainer.train()
    one, two = _weights(tmp_path / "one"), _weights(reference)
    for name in two:
        torch.testing.assert_close(one[name], two[name], rtol=0, atol=1e-6, msg=name)
    a, b = _log(tmp_path / "one"), _log(reference)
    assert [e["step"] for e in a] == [e["step"] for e in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], rel=1e-6) for k in x if k != "kind")
    # rank 0 alone wrote the log and the checkpoints; every process's RNG state is in last.pt
    assert len(load_checkpoint(reference / "checkpoints" / "last.pt")["rng_ranks"]) == 2


@pytest.mark.slow
def test_early_stopping_and_the_plateau_schedule_are_decided_for_every_process(tmp_path):
    """Rank 0 validates alone; its decisions (a lower learning rate on a plateau, early stopping)
    reach the other process: the run stops early with both processes (exit 0, no hang) and its
    learning rates and weights are those of one process accumulating 2 batches (1e-6)."""
    decisions = {"lr_schedule": "plateau", "plateau_patience": 0, "validate_every": 3, "max_steps": None,
                 "early_stopping": {"metric": "exact", "patience": 2}}
    subprocess.run(TORCHRUN + ["--standalone", "--nproc-per-node", "2", *TRAIN, str(_config(tmp_path / "two", **decisions))],
                   env=ENV, check=True, capture_output=True, timeout=600)
    Trainer(load_config(_config(tmp_path / "one", accumulate_steps=2, **decisions))).train()
    two, one = tmp_path / "two" / "model", tmp_path / "one" / "model"
    progress = load_checkpoint(two / "checkpoints" / "last.pt")["progress"]
    assert progress["done"] and progress["bad_validations"] == 2 and progress["epoch"] < 10  # stopped early
    assert len({e["lr"] for e in _log(two) if e["kind"] == "train"}) > 1  # the plateau lowered it
    assert [(e["step"], e["kind"], e.get("lr")) for e in _log(two)] == [(e["step"], e["kind"], e.get("lr")) for e in _log(one)]
    for name, w in _weights(one).items():
        torch.testing.assert_close(_weights(two)[name], w, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_and_resume_is_exact(reference, tmp_path):
    """SIGTERM to rank 1 only: both processes stop after the same update, rank 0 saves it and
    says how to continue. Resumed with 2 processes, the run ends with the reference's weights and
    log exactly; resumed with 1 process accumulating 2 batches, with its weights (1e-6)."""
    config = _config(tmp_path)
    model_dir = tmp_path / "model"
    proc = _start(["--standalone", "--nproc-per-node", "2", *TRAIN, str(config)], tmp_path / "run.log")
    _wait_for_step(proc, model_dir, 6)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGTERM)
    proc.wait(timeout=300)
    output = (tmp_path / "run.log").read_text()
    step = load_checkpoint(model_dir / "checkpoints" / "last.pt")["progress"]["step"]
    assert 6 <= step < STEPS, output
    assert f"s2s: stopped at step {step}; continue with: s2s train --resume {model_dir}" in output
    assert "exitcode  : 143" in output  # both processes stopped as asked, none failed

    shutil.copytree(model_dir, tmp_path / "alone")
    subprocess.run(TORCHRUN + ["--standalone", "--nproc-per-node", "2", *TRAIN, "--resume", str(model_dir)], env=ENV, check=True,
                   capture_output=True, timeout=600)
    assert _log(model_dir) == _log(reference)
    assert all(torch.equal(w, _weights(reference)[k]) for k, w in _weights(model_dir).items())

    alone = tmp_path / "alone"
    (alone / ".seq2seqkit.lock").unlink(missing_ok=True)
    Trainer(load_for_resume(alone, ["training.accumulate_steps=2"]), resume=True).train()
    for name, w in _weights(reference).items():
        torch.testing.assert_close(_weights(alone)[name], w, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_resume_restores_every_process_random_state(tmp_path):
    """With dropout and scheduled sampling, each process draws from its own RNG: a run stopped by
    SIGTERM and resumed with 2 processes still ends with the weights and log of one never stopped."""
    configs = [_config(tmp_path / name, dropout=0.2, teacher_forcing={"ratio": 0.8}) for name in ("straight", "stopped")]
    straight = _start(["--standalone", "--nproc-per-node", "2", *TRAIN, str(configs[0])], tmp_path / "straight.log")
    stopped_dir = tmp_path / "stopped" / "model"
    proc = _start(["--standalone", "--nproc-per-node", "2", *TRAIN, str(configs[1])], tmp_path / "stopped.log")
    _wait_for_step(proc, stopped_dir, 6)
    os.kill(_rank_pid(proc.pid, 0), signal.SIGTERM)
    proc.wait(timeout=300)
    assert straight.wait(timeout=300) == 0
    assert load_checkpoint(stopped_dir / "checkpoints" / "last.pt")["progress"]["step"] < STEPS
    subprocess.run(TORCHRUN + ["--standalone", "--nproc-per-node", "2", *TRAIN, "--resume", str(stopped_dir)], env=ENV, check=True,
                   capture_output=True, timeout=600)
    assert _log(stopped_dir) == _log(tmp_path / "straight" / "model")
    assert all(torch.equal(w, _weights(tmp_path / "straight" / "model")[k]) for k, w in _weights(stopped_dir).items())


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["dies", "hangs"])
def test_a_process_that_dies_or_hangs_stops_the_others_with_a_clear_message(how, tmp_path):
    """Rank 1 killed: rank 0's next collective fails at once. Rank 1 stopped (a hung machine):
    rank 0 gives up after training.distributed_timeout_s (3 s). Either way rank 0 exits with one
    line saying what happened and how to continue, and torchrun ends: nothing hangs."""
    config = _config(tmp_path, max_steps=100000, distributed_timeout_s=3)
    proc = _start(["--standalone", "--nproc-per-node", "2", *TRAIN, str(config)], tmp_path / "run.log")
    _wait_for_step(proc, tmp_path / "model", 4)
    victim = _rank_pid(proc.pid, 1)
    os.kill(victim, how)
    expected = "s2s: error: process 0 of 2: lost the other processes of the run during "
    deadline = time.time() + 120
    while expected not in (tmp_path / "run.log").read_text():
        assert time.time() < deadline, "rank 0 did not give up:\n" + (tmp_path / "run.log").read_text()
        time.sleep(0.1)
    if how == signal.SIGSTOP:
        os.kill(victim, signal.SIGCONT)  # torchrun's SIGTERM to it is pending; let it take it
    assert proc.wait(timeout=120) != 0
    output = (tmp_path / "run.log").read_text()
    assert expected in output, output
    assert "(each waits at most training.distributed_timeout_s=3 s)" in output, output
    assert f"continue with 's2s train --resume {tmp_path / 'model'}'" in output
    if how == signal.SIGSTOP:
        assert "Timed out" in output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_machines_on_loopback_train_as_two_processes_of_one(reference, tmp_path):
    """Two torchrun launchers, --nnodes 2 with one process each, meet by c10d rendezvous on
    127.0.0.1 (what two machines do over the network): the run equals the reference's, exactly."""
    config = _config(tmp_path)
    port = _free_port()
    nodes = [_start(["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(i), "--rdzv-backend", "c10d",
                     "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "loopback", *TRAIN, str(config)],
                    tmp_path / f"node{i}.log") for i in range(2)]
    for i, node in enumerate(nodes):
        assert node.wait(timeout=600) == 0, (tmp_path / f"node{i}.log").read_text()
    assert _log(tmp_path / "model") == _log(reference)
    assert all(torch.equal(w, _weights(reference)[k]) for k, w in _weights(tmp_path / "model").items())


def test_checkpoints_of_a_distributed_run_restore_each_process_rng(tmp_path):
    """Resuming with as many processes, each takes its own saved RNG state; with more, a new
    process is seeded by its rank (rank 0 keeps the saved one, as a single process would)."""
    states = [{"torch": torch.tensor([r])} for r in range(2)]
    assert Group(rank=1, world_size=2).own_rng(states[0], states) is states[1]
    assert Group(rank=0, world_size=3).own_rng(states[0], states) is states[0]
    assert Group(rank=2, world_size=3).own_rng(states[0], states) is None
    assert Group(rank=0, world_size=1).own_rng(states[0], None) is states[0]
    a, b = Group(rank=1, world_size=2), Group(rank=2, world_size=3)
    a.seed(7, 0)
    x = torch.rand(3)
    b.seed(7, 0)
    assert not torch.equal(x, torch.rand(3))
    a.seed(7, 0)
    assert torch.equal(x, torch.rand(3))
