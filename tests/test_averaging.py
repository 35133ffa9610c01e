"""Epoch checkpoints and `s2s average` (checkpoint averaging), and the CPU allocator setting."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import seq2seqkit
from seq2seqkit.checkpoint import average_checkpoints, epoch_checkpoints, load_checkpoint, save_checkpoint
from seq2seqkit.cli import main
from seq2seqkit.errors import UserError
from seq2seqkit.runtime import keep_freed_memory
from seq2seqkit.training import Trainer

from conftest import tiny_config


def test_average_is_the_elementwise_mean(tmp_path: Path):
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    b = {"w": torch.tensor([3.0, -2.0]), "b": torch.tensor([[1.5]])}
    for name, w in (("epoch-1", a), ("epoch-2", b)):
        save_checkpoint({"model": w}, tmp_path / f"{name}.pt")
    avg = average_checkpoints(epoch_checkpoints(tmp_path))
    assert torch.equal(avg["w"], torch.tensor([2.0, 0.0]))
    assert torch.equal(avg["b"], torch.tensor([[1.0]]))
    assert avg["w"].dtype == torch.float32


def test_epoch_checkpoints_sort_by_epoch_number(tmp_path: Path):
    for e in (10, 9, 2):
        save_checkpoint({"model": {}}, tmp_path / f"epoch-{e}.pt")
    (tmp_path / "epoch-x.pt").write_bytes(b"")
    assert [p.name for p in epoch_checkpoints(tmp_path)] == ["epoch-2.pt", "epoch-9.pt", "epoch-10.pt"]


def test_average_refuses_different_models(tmp_path: Path):
    save_checkpoint({"model": {"w": torch.zeros(2)}}, tmp_path / "epoch-1.pt")
    save_checkpoint({"model": {"w": torch.zeros(3)}}, tmp_path / "epoch-2.pt")
    with pytest.raises(UserError, match=r"epoch-2\.pt: w has shape \(3,\)"):
        average_checkpoints(epoch_checkpoints(tmp_path))


def test_training_keeps_the_last_epochs_and_the_cli_averages_them(tmp_path: Path, capsys):
    cfg = tiny_config(tmp_path, epochs=3, keep_epoch_checkpoints=2)
    Trainer(cfg).train()
    ckpt = Path(cfg.output_dir) / "checkpoints"
    assert [p.name for p in epoch_checkpoints(ckpt)] == ["epoch-2.pt", "epoch-3.pt"]
    # the last epoch's weights are the final weights
    assert all(torch.equal(load_checkpoint(ckpt / "epoch-3.pt")["model"][k], v)
               for k, v in load_checkpoint(ckpt / "last.pt")["model"].items())

    assert main(["average", cfg.output_dir, "--last", "2"]) == 0
    avg = load_checkpoint(ckpt / "averaged.pt")
    assert avg["averaged"] == ["epoch-2.pt", "epoch-3.pt"]
    e2, e3 = (load_checkpoint(ckpt / f"epoch-{e}.pt")["model"] for e in (2, 3))
    for k, v in avg["model"].items():
        torch.testing.assert_close(v, (e2[k].double() + e3[k].double()).div(2).float())
    out = seq2seqkit.load(cfg.output_dir, checkpoint="averaged").translate(["a b c"])
    assert len(out) == 1

    capsys.readouterr()
    assert main(["average", cfg.output_dir, "--last", "5"]) == 2
    assert "only 2 epoch checkpoints are kept (epoch-2.pt, epoch-3.pt)" in capsys.readouterr().err
    assert main(["average", cfg.output_dir, "--output", "best"]) == 2
    assert "would overwrite a training checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_setting_applies_on_linux():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_large_tensor_memory_is_reused_without_page_faults():
    """A block above glibc's 32 MiB mmap ceiling (like a batch's logits) is allocated and freed
    over and over, as in training: once the heap has settled, re-allocating it faults in no pages
    (16,384 per allocation without the setting, every time).

    It takes a few rounds to settle, not one: PyTorch allocates with ``posix_memalign``, which asks
    glibc for the size plus the alignment, so a freed hole of exactly the block's size does not fit
    the next request until neighbouring holes coalesce (rounds 2-7 in 25 trials here). In a fresh
    process, so that the other tests' heap does not decide where the blocks land."""
    import subprocess

    code = (
        "import resource, torch\n"
        "from seq2seqkit.runtime import keep_freed_memory\n"
        "keep_freed_memory()\n"
        "faults = []\n"
        "for _ in range(32):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    torch.ones(16 << 20)\n"  # 64 MiB of float32: allocated, touched, freed
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(*faults)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    faults = [int(f) for f in out.split()]
    assert max(faults[-16:]) < 100, faults
