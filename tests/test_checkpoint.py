"""Tests for seq2seqkit.checkpoint: round trips, refusing pickled code, atomic writes."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch

from seq2seqkit import checkpoint as ckpt
from seq2seqkit.checkpoint import atomic_write_bytes, atomic_write_text, load_checkpoint, save_checkpoint
from seq2seqkit.errors import UserError


class Payload:
    """An arbitrary class: unpickling it must not be allowed."""

    def __init__(self) -> None:
        self.x = 1


def test_round_trip(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    rng = random.Random(42)
    rng.random()
    obj = {
        "model": {"w": torch.randn(3, 4, generator=g), "b": torch.arange(5, dtype=torch.int64)},
        "step": 123,
        "lr": 0.00025,
        "history": [1.5, 2.25, 3.0],
        "names": ["a", "b"],
        "flag": True,
        "none": None,
        "py_rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
    }
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(obj, path)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left
    back = load_checkpoint(path)
    assert set(back) == set(obj)
    assert torch.equal(back["model"]["w"], obj["model"]["w"])
    assert back["model"]["b"].dtype == torch.int64
    assert back["model"]["b"].tolist() == [0, 1, 2, 3, 4]
    assert back["step"] == 123 and isinstance(back["step"], int)
    assert back["lr"] == 0.00025
    assert back["history"] == [1.5, 2.25, 3.0]
    assert back["names"] == ["a", "b"] and back["flag"] is True and back["none"] is None
    assert torch.equal(back["torch_rng"], obj["torch_rng"])
    # the restored Python RNG state continues the same sequence
    r2 = random.Random()
    r2.setstate(back["py_rng"])
    assert [r2.random() for _ in range(3)] == [rng.random() for _ in range(3)]


def test_save_overwrites(tmp_path: Path):
    path = tmp_path / "c.pt"
    save_checkpoint({"step": 1}, path)
    save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_missing_checkpoint(tmp_path: Path):
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert str(info.value) == f"{tmp_path / 'nope.pt'}: no such checkpoint"


def test_refuses_custom_class(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Payload()}, path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: cannot load checkpoint: it holds a Python object (")
    assert "Payload" in msg
    assert "weights_only" not in msg and "\n" not in msg  # torch's advice to load it unsafely is not passed on


class RunsCode:
    """Unpickling calls ``open(marker, "w")``: running code from a file is what weights_only refuses."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_refuses_reduce_payload(tmp_path: Path):
    marker = tmp_path / "marker"
    path = tmp_path / "reduce.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": RunsCode(marker)}, f, protocol=2)
    with pytest.raises(UserError, match="cannot load checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()  # nothing was executed
    # the same file unpickled without protection does run the call (the test can fail)
    with open(path, "rb") as f:
        pickle.load(f)["x"].close()
    assert marker.exists()


def test_refuses_corrupt_file(tmp_path: Path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="cannot load checkpoint"):
        load_checkpoint(path)


def test_atomic_write_text(tmp_path: Path):
    path = tmp_path / "a" / "b" / "f.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode("utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_atomic_write_failure_keeps_old_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "state.json"
    path.write_text("old content", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(path, b"new content")
    assert path.read_text(encoding="utf-8") == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no .tmp left
    with pytest.raises(OSError, match="disk on fire"):
        save_checkpoint({"step": 9}, tmp_path / "new.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_write_failure_during_write(tmp_path: Path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"v1")

    def fail_fsync(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(ckpt.os, "fsync", fail_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        atomic_write_bytes(path, b"v2")
    assert path.read_bytes() == b"v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
