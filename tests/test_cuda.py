"""The CUDA path, where a GPU exists (skipped elsewhere: CI has none). Every family computes on
the GPU what it computes on the CPU, with cached step-by-step decoding too; search (greedy, beam,
sampling, step-level batching) gives the CPU's outputs; training runs on the GPU in fp32, bf16
and fp16 (float16 with its loss scaler, overflow skipped), and what it saves loads on either
device; torchrun with one process per GPU trains; more processes than GPUs is one clear error
(that one, and asking for CUDA without a GPU, are tested on every machine).

fp32 comparisons run with TF32 off (it would round matrix products to 10-bit mantissas).
``S2S_TEST_CUDA_AS=cpu`` runs this file on the CPU against itself, to try the tests' own code
on a machine without a GPU."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from seq2seqkit.data.dataset import pad_sources
from seq2seqkit.errors import UserError
from seq2seqkit.search import PathDecoder, beam_search, greedy_search, most_probable, sampler
from seq2seqkit.training import Trainer
from seq2seqkit.translate import Translator

from conftest import tiny_config, tiny_model
from test_search import random_sources
from test_step_batching import FAMILIES, NAMES, VOCAB, model_of

DEVICE = os.environ.get("S2S_TEST_CUDA_AS", "cuda")
needs_gpu = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                               reason="no CUDA GPU here (CI has none): run on a machine with one")
SOURCES = random_sources(12, seed=11)


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_device(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to(DEVICE)


def close(gpu, cpu) -> None:
    """Same tokens, scores within float rounding of a different machine's kernels."""
    assert [h.tokens for h in gpu] == [h.tokens for h in cpu]
    for g, c in zip(gpu, cpu):
        assert g.score == pytest.approx(c.score, abs=1e-4)


@needs_gpu
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_computes_on_the_gpu_what_it_computes_on_the_cpu(name):
    model = model_of(name)
    gpu = on_device(model)
    assert all(p.device.type == DEVICE for p in gpu.parameters())
    src, lens = pad_sources(SOURCES)
    tin = torch.randint(4, VOCAB, (len(SOURCES), 7))
    with torch.no_grad():
        want = model(src, lens, tin)
        got = gpu(src.to(DEVICE), lens.to(DEVICE), tin.to(DEVICE))
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
        # the cached step-by-step path (search's) on the GPU matches the parallel forward pass
        enc = gpu.encode(src.to(DEVICE), lens.to(DEVICE))
        state, steps = gpu.init_state(enc), []
        for t in range(tin.size(1)):
            out = gpu.decode_step(tin[:, t].to(DEVICE), enc, state)
            steps.append(out.logits)
            state = out.state
        torch.testing.assert_close(torch.stack(steps, 1).cpu(), want, rtol=1e-4, atol=1e-4)


@needs_gpu
@pytest.mark.parametrize("name", NAMES)
def test_search_on_the_gpu_gives_the_cpus_outputs(name):
    model = model_of(name)
    gpu = on_device(model)
    src, lens = pad_sources(SOURCES)
    dsrc, dlens = src.to(DEVICE), lens.to(DEVICE)
    close(greedy_search(gpu, dsrc, dlens, 1.5, 4), greedy_search(model, src, lens, 1.5, 4))
    beams_gpu = beam_search(gpu, dsrc, dlens, 4, 1.5, 4, nbest=2)
    beams_cpu = beam_search(model, src, lens, 4, 1.5, 4, nbest=2)
    for g, c in zip(beams_gpu, beams_cpu):
        close(g, c)
    # step-level batching: inputs admitted into a running batch on the GPU, in three groups
    decoder, out = PathDecoder(gpu, most_probable, 1.5, 4), {}
    for group, steps in ((range(0, 5), 2), (range(5, 9), 1), (range(9, 12), 0)):
        s, ln = pad_sources([SOURCES[i] for i in group])
        decoder.admit(s.to(DEVICE), ln.to(DEVICE), list(group))
        for _ in range(steps):
            out.update(decoder.step())
    while decoder:
        out.update(decoder.step())
    close([out[i] for i in range(len(SOURCES))], greedy_search(model, src, lens, 1.5, 4))
    # sampling with one token to draw (top-k 1) is greedy search, on the GPU too
    decoder = PathDecoder(gpu, sampler(top_k=1), 1.5, 4)
    decoder.admit(dsrc, dlens, list(range(len(SOURCES))))
    drawn = {}
    while decoder:
        drawn.update(decoder.step())
    close([drawn[i] for i in range(len(SOURCES))], greedy_search(model, src, lens, 1.5, 4))


def _transformer_run(tmp_path: Path, precision: str, **training):
    cfg = tiny_config(tmp_path, precision=precision, device=DEVICE, **{"log_every": 10, **training})
    cfg.model = tiny_model("transformer", heads=2, ff_dim=64)
    return cfg


@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_the_gpu_in_each_precision(tmp_path, precision):
    cfg = _transformer_run(tmp_path, precision, max_steps=120)
    trainer = Trainer(cfg)
    assert trainer.device.type == DEVICE
    seen = []
    trainer.model.output.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    trainer.train()
    assert set(seen) == {{"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]}
    assert all(p.dtype == torch.float32 and p.device.type == DEVICE for p in trainer.model.parameters())
    log = [json.loads(line) for line in (Path(cfg.output_dir) / "train_log.jsonl").read_text().splitlines()]
    train = [e for e in log if e["kind"] == "train"]
    assert train[-1]["loss"] < 0.6 * train[0]["loss"]
    assert ("loss_scale" in train[-1]) == (precision == "fp16")
    assert ("gpu_peak_mib" in train[-1]) == (DEVICE == "cuda")
    # what it saved decodes the same on the GPU and on the CPU
    dev = Path(cfg.data.dev.src).read_text().splitlines()[:100]
    on_gpu = Translator.load(cfg.output_dir, device=DEVICE).translate(dev)
    on_cpu = Translator.load(cfg.output_dir, device="cpu").translate(dev)
    assert sum(a == b for a, b in zip(on_gpu, on_cpu)) >= 98


@needs_gpu
def test_fp16_overflow_on_the_gpu_skips_the_update_and_halves_the_scale(tmp_path, caplog):
    cfg = _transformer_run(tmp_path, "fp16", max_steps=3, log_every=1)
    trainer = Trainer(cfg)
    trainer.scaler = torch.amp.GradScaler(DEVICE, init_scale=2.0 ** 60)
    trainer.train()
    skipped = [r for r in caplog.records if "fp16 overflow, update skipped" in r.getMessage()]
    assert skipped
    assert trainer.progress.step == 3
    assert trainer.scaler.get_scale() <= 2.0 ** 60 / 2 ** len(skipped)


def _config_file(tmp_path: Path, device: str = DEVICE) -> Path:
    cfg = _transformer_run(tmp_path, "bf16", max_steps=30)
    cfg.training.device = device
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    return path


@needs_gpu
def test_torchrun_with_one_process_per_gpu_trains(tmp_path):
    """As many processes as GPUs (NCCL when there are two or more; one GPU: torchrun's one process)."""
    config = _config_file(tmp_path)
    n = torch.cuda.device_count() if DEVICE == "cuda" else 1
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                          "-m", "seq2seqkit", "train", str(config)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "model" / "checkpoints" / "best.pt").is_file()


@needs_gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="counts GPUs")
def test_more_processes_than_gpus_is_one_clear_error(tmp_path):
    config = _config_file(tmp_path)
    n = torch.cuda.device_count() + 1
    run = subprocess.run([sys.executable, "-m", "seq2seqkit", "train", "--nproc", str(n), str(config)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"s2s: error: --nproc {n}: training.device is cuda and this machine has {n - 1} GPU{'s' * (n != 2)}; NCCL "
        f"needs one GPU per process: --nproc {n - 1} at most (or training.device=cpu)"]
    assert not (tmp_path / "model").exists()


def test_asking_for_cuda_without_a_gpu_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _transformer_run(tmp_path, "fp32", max_steps=1)
    cfg.training.device = "cuda"
    with pytest.raises(UserError, match="no CUDA GPU is available"):
        Trainer(cfg)


def test_more_processes_than_gpus_is_refused_before_any_starts(tmp_path, monkeypatch, capsys):
    """The same check on any machine: PyTorch made to report one GPU."""
    from seq2seqkit.cli import main

    from conftest import one_line_error

    config = _config_file(tmp_path, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["train", "--nproc", "2", str(config)]) == 2
    assert one_line_error(capsys) == ("s2s: error: --nproc 2: training.device is cuda and this machine has 1 GPU; "
                                      "NCCL needs one GPU per process: --nproc 1 at most (or training.device=cpu)")
    assert not (tmp_path / "model").exists()
