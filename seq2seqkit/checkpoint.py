"""Atomic files and safe checkpoints.

A checkpoint is written to a temporary file in the same directory, flushed to disk and then
renamed over the old one, so a crash at any moment leaves either the old or the new file,
never half of one. Loading uses ``weights_only=True``: a checkpoint is data, and loading one
never runs code from it.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from .errors import UserError


# atomic_open's temporary files: ".NAME." + 8 characters from tempfile's alphabet + ".tmp"
TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is flushed, fsynced and renamed
    over ``path``; on an exception it is removed and ``path`` is left as it was. The writer
    holds an OS lock (``flock``) on its temporary file until it is renamed: one a killed writer
    left behind is unlocked, which is how :func:`remove_abandoned_temporaries` tells the two apart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # read-only or full: name the file that could not be written, not the temporary
        if e.errno == errno.ENOENT and path.parent.is_dir():  # /proc: its directory exists, but no file can be made
            raise OSError(e.errno, f"cannot be written (no new file can be made in {path.parent}, so it is not "
                                   f"replaced)", str(path)) from None
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel when the process ends
    except OSError:
        pass  # a file system without locks: the file is written all the same
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno is not None and e.filename in (None, tmp):  # a failed write (disk full, ...): name the file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


TEMPORARY_AGE_S = 5.0  # younger temporaries are left alone: a writer locks its own just after making it


def remove_abandoned_temporaries(path: Path) -> int:
    """Delete the temporary files that :func:`atomic_open` writes beside ``path``
    (``.NAME.XXXXXXXX.tmp``) and that no process is writing: a killed ``s2s generate -o NAME``
    left one, which the next run to that output removes. A temporary whose lock is held belongs
    to a write under way, and one made in the last :data:`TEMPORARY_AGE_S` seconds may not be
    locked yet: both stay. Returns how many were removed."""
    try:
        candidates = [p for p in path.parent.iterdir()
                      if (m := TEMPORARY.fullmatch(p.name)) and m.group("name") == path.name]
    except OSError:
        return 0
    removed = 0
    for p in candidates:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or time.time() - info.st_mtime < TEMPORARY_AGE_S:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
            p.unlink()
            removed += 1
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


@contextmanager
def open_output(path: str | Path) -> Iterator[IO[str]]:
    """A text output file a user named (``generate -o``). A regular file, or a new one, is
    written atomically (:func:`atomic_open`), through a symbolic link to the file it points to
    (the link stays). A device or a pipe that exists (``/dev/null``, ``/dev/stdout``, a FIFO) is
    written in place, as a shell's ``>`` does: renaming a file over it would replace the device
    node itself (``/dev/null`` turned into a file breaks every program that uses it)."""
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    try:
        mode = target.stat().st_mode
    except OSError:
        mode = None
    if mode is None or stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # a directory: atomic_open's error names it
        remove_abandoned_temporaries(target)
        with atomic_open(target) as f:
            yield f
        return
    try:
        with open(target, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
    except OSError as e:
        if e.filename is None:  # a failed write (/dev/full: no space): name the output
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """The dict saved in ``path``, read with ``weights_only=True``. A file that is not one (damaged,
    truncated, another format, or holding Python objects that loading would have to run) is one
    UserError; torch's own message is not passed on, since it advises loading without that protection.

    ``mmap``: the tensors of a CPU load are views of the file mapped into memory (copy-on-write)
    instead of copies on the heap, and leave nothing behind on the heap once dropped."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise UserError(f"{path}: {'a directory' if path.is_dir() else 'not a regular file'}, not a checkpoint")
        raise UserError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except OSError:
        raise
    except Exception as e:  # corrupt file, or one holding arbitrary objects
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise UserError(f"{path}: cannot load checkpoint: it holds a Python object ({found.group(1)}), not only "
                            f"tensors, and loading it could run code from the file; refused") from None
        raise UserError(f"{path}: cannot load checkpoint: not a PyTorch checkpoint, or a damaged or truncated one "
                        f"({type(e).__name__})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a seq2seq-kit checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def model_weights(ckpt: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model`` weights of a loaded checkpoint, refused with one line when it has none."""
    weights = ckpt.get("model")
    if not isinstance(weights, dict) or not weights or not all(isinstance(w, torch.Tensor) for w in weights.values()):
        keys = ", ".join(map(str, list(ckpt)[:5])) or "nothing"
        raise UserError(f"{path}: not a model checkpoint: no 'model' weights (it holds {keys})")
    return weights


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path,
                 needs: tuple[str, ...] = (), tokenizers: dict[str, str] | None = None) -> None:
    """Load a checkpoint's weights into ``model``, once :func:`check_weights` has found that they fit it."""
    check_weights(model, ckpt, path, needs, tokenizers)
    model.load_state_dict(model_weights(ckpt, path))


def check_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path,
                  needs: tuple[str, ...] = (), tokenizers: dict[str, str] | None = None) -> None:
    """Whether a checkpoint's weights fit ``model`` (which may live on the meta device, so that
    a config edited to a huge size is refused without allocating it). Weights that do not fit
    (missing or extra parameters, another shape: the config was changed since training), a
    checkpoint that lacks the entries in ``needs``, and one trained with other tokenizers than
    ``tokenizers`` (the fingerprints of the model directory's, see :func:`tokenizer_stamp`;
    checkpoints written before they were recorded are not checked) are one UserError saying which."""
    weights = model_weights(ckpt, path)
    for key in needs:
        if key not in ckpt:
            raise UserError(f"{path}: not a training checkpoint: no {key!r} state (weights only, e.g. an "
                            f"epoch or averaged checkpoint?)")
    trained_with = ckpt.get("tokenizers")
    if tokenizers is not None and isinstance(trained_with, dict):
        for side in ("src", "tgt"):
            if side in trained_with and trained_with[side] != tokenizers[side]:
                raise UserError(f"{path}: was trained with another {side} tokenizer than the model directory's "
                                f"(were its {side}.* vocabulary or tokenizer files replaced or edited?); its "
                                f"outputs would be wrong ids")
    own = model.state_dict()

    def listed(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    missing, extra = [k for k in own if k not in weights], [k for k in weights if k not in own]
    if missing or extra:
        what = "; ".join(x for x in (missing and f"missing {listed(missing)}", extra and f"unexpected {listed(extra)}") if x)
        raise UserError(f"{path}: its weights do not fit the model the config describes ({what}): "
                        f"was model.family or another model setting changed since training?")
    for name, t in own.items():
        w = weights[name]
        if w.shape != t.shape:
            raise UserError(f"{path}: {name} has shape {tuple(w.shape)} in the checkpoint but "
                            f"{tuple(t.shape)} in the model the config describes: was a model setting (e.g. "
                            f"model.hidden_size) changed since training?")
        # weights that fit but are not a trained model's: loading would cast them, or keep NaN
        if w.dtype.is_floating_point != t.dtype.is_floating_point:
            raise UserError(f"{path}: {name} holds {str(w.dtype).removeprefix('torch.')} values where the model "
                            f"has {str(t.dtype).removeprefix('torch.')} ones: not weights this toolkit wrote")
        if w.dtype.is_floating_point and not bool(torch.isfinite(w).all()):
            raise UserError(f"{path}: {name} holds non-finite values (NaN or infinity): not a trained model's "
                            f"weights (training stops at a non-finite loss and keeps the last good checkpoint)")


def tokenizer_stamp(src_tok: Any, tgt_tok: Any) -> dict[str, str]:
    """What a checkpoint records of the tokenizers its ids belong to (their fingerprints), so
    that loading it with other vocabulary files is refused instead of decoding wrong tokens."""
    return {"src": src_tok.fingerprint(), "tgt": tgt_tok.fingerprint()}


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
        weights = model_weights(load_checkpoint(path), path)
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
    stamps = {json.dumps(load_checkpoint(p).get("tokenizers"), sort_keys=True) for p in chosen}
    stamp = json.loads(stamps.pop()) if len(stamps) == 1 else None  # kept where all agree
    save_checkpoint({"model": average_checkpoints(chosen), "averaged": [p.name for p in chosen],
                     **({"tokenizers": stamp} if stamp else {})}, out)
    return out, chosen
