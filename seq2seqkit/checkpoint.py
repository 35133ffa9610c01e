"""Atomic files and safe checkpoints.

A checkpoint is written to a temporary file in the same directory, flushed to disk and then
renamed over the old one, so a crash at any moment leaves either the old or the new file,
never half of one. Loading uses ``weights_only=True``: a checkpoint is data, and loading one
never runs code from it.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from .errors import UserError


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is flushed, fsynced and renamed
    over ``path``; on an exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, or one holding arbitrary objects
        raise UserError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from None


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the ``model`` weights in ``paths`` (all of one architecture).

    Averaging the last few epochs' weights smooths the noise of the final updates and usually
    gains a little BLEU over any single one of them (Vaswani et al. 2017 average the last 5 or
    20 checkpoints; fairseq's ``average_checkpoints.py`` does the same). Sums are kept in float64
    so the mean does not depend on the order of the files.
    """
    if not paths:
        raise UserError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        weights = load_checkpoint(path)["model"]
        if total and weights.keys() != total.keys():
            raise UserError(f"{path}: its weights do not match {paths[0]} (a different model?)")
        for name, w in weights.items():
            if name in total and w.shape != total[name].shape:
                raise UserError(f"{path}: {name} has shape {tuple(w.shape)}, not {tuple(total[name].shape)} "
                                f"as in {paths[0]}")
            if w.is_floating_point():
                total[name] = total[name] + w.double() if name in total else w.double()
            else:
                total[name] = w  # integer buffers (none today) are taken from the last file
    return {name: (t / len(paths)).float() if t.is_floating_point() else t for name, t in total.items()}


def epoch_checkpoints(ckpt_dir: Path) -> list[Path]:
    """``epoch-N.pt`` files in ``ckpt_dir``, oldest epoch first."""
    found = [(int(p.stem.split("-", 1)[1]), p) for p in ckpt_dir.glob("epoch-*.pt")
             if p.stem.split("-", 1)[1].isdigit()]
    return [p for _, p in sorted(found)]


def write_average(model_dir: Path, last: int, name: str = "averaged") -> tuple[Path, list[Path]]:
    """Write ``MODEL_DIR/checkpoints/NAME.pt``, the mean of the last ``last`` epoch checkpoints;
    returns its path and the files averaged. Loadable as ``Translator.load(..., checkpoint=NAME)``."""
    from .rundir import RunLock

    ckpt_dir = Path(model_dir) / "checkpoints"
    check_average_name(name)
    if last < 1:
        raise UserError(f"--last {last}: must be at least 1")
    if not ckpt_dir.is_dir():
        raise UserError(f"{model_dir}: not a model directory (no checkpoints/)")
    with RunLock(model_dir):  # not while a run writes (and prunes) its checkpoints
        return _write_average(ckpt_dir, last, name)


def check_average_name(name: str) -> None:
    """``--output NAME`` is a plain file name (NAME.pt in checkpoints/), not a path, and not the
    name of a checkpoint that training writes."""
    if not name or name in (".", "..") or "/" in name or (os.altsep and os.altsep in name) or "\0" in name:
        raise UserError(f"--output {name!r}: must be a plain name such as 'averaged' (written as "
                        f"MODEL_DIR/checkpoints/NAME.pt), not a path")
    if name in ("best", "last") or name.startswith("epoch-"):
        raise UserError(f"--output {name}: would overwrite a training checkpoint; choose another name")


def _is_average(path: Path) -> bool:
    try:
        return path.is_file() and "averaged" in load_checkpoint(path)
    except UserError:
        return False


def _write_average(ckpt_dir: Path, last: int, name: str) -> tuple[Path, list[Path]]:
    out = ckpt_dir / f"{name}.pt"
    if out.exists() and not _is_average(out):
        raise UserError(f"{out}: exists and is not an average written by 's2s average'; choose another --output")
    found = epoch_checkpoints(ckpt_dir)
    if not found:
        raise UserError(f"{ckpt_dir}: no epoch-N.pt checkpoints (train with training.keep_epoch_checkpoints=N)")
    if last > len(found):
        raise UserError(f"{ckpt_dir}: --last {last} asked, but only {len(found)} epoch checkpoints are kept "
                        f"({', '.join(p.name for p in found)})")
    chosen = found[-last:]
    save_checkpoint({"model": average_checkpoints(chosen), "averaged": [p.name for p in chosen]}, out)
    return out, chosen
