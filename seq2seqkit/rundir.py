"""The model directory as the toolkit owns it: what marks it as ours, who may write in it.

Nothing a user owns is deleted or overwritten by surprise, so every command that deletes or
replaces a directory first checks that it is one this toolkit wrote:

* A run's directory gets a small marker file, ``.seq2seqkit.json``, written atomically when
  the run creates it (an ``s2s export`` directory gets one too, of kind ``ctranslate2``).
  Directories written before the marker existed are recognised by their files: ``config.yaml``,
  ``tokenizers.json`` and ``checkpoints/`` (an export: ``model.bin``, ``config.json``,
  ``config.yaml``, ``tokenizers.json``).
* A directory is deleted or replaced only if it holds nothing but what the toolkit writes
  there (:func:`foreign_entries`): a file a user put into a model directory keeps it alive.

Runs cannot collide: a run holds :class:`RunLock`, an OS file lock (``flock``) on
``.seq2seqkit.lock`` inside the model directory, with the holder's process id written in it.
The kernel drops the lock when the process ends, however it ends, so a SIGKILLed run never
leaves a stale lock; a second run, a ``--resume`` or an ``s2s average`` meanwhile is refused
with the holder's pid. The run that holds the lock removes the temporary files an interrupted
run left behind (``.last.pt.*.tmp`` and the like from :func:`checkpoint.atomic_open`), and
only those: files whose names match what the toolkit writes there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from .checkpoint import TEMPORARY, atomic_write_text
from .errors import ConfigError, UserError

log = logging.getLogger("seq2seqkit")

MARKER = ".seq2seqkit.json"
LOCK = ".seq2seqkit.lock"
MODEL, EXPORT, PLOTS = "model", "ctranslate2", "attention-plots"
PLOT_NAME = re.compile(r"\d{4,}\.png")  # --plot-attention's files: 0001.png, 0002.png, ...

# What the toolkit writes at the top of a model directory (tokenizer files: see ``_manifest_files``).
MODEL_FILES = {MARKER, LOCK, "config.yaml", "tokenizers.json", "train_log.jsonl", "checkpoints", "tensorboard",
               "src.vocab.json", "tgt.vocab.json", "src.spm.model", "tgt.spm.model"}
EXPORT_FILES = {MARKER, "model.bin", "config.json", "config.yaml", "tokenizers.json",
                "src.vocab.json", "tgt.vocab.json", "src.spm.model", "tgt.spm.model"}


def _manifest_files(directory: Path) -> set[str]:
    """The tokenizer files ``tokenizers.json`` names (empty if it is missing or unreadable)."""
    try:
        meta = json.loads((directory / "tokenizers.json").read_text(encoding="utf-8"))
        return {str(meta[side][key]) for side in ("src", "tgt") for key in ("model", "vocab") if key in meta[side]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def write_marker(directory: Path, kind: str) -> None:
    from . import __version__

    atomic_write_text(directory / MARKER, json.dumps({"seq2seqkit": kind, "version": __version__}) + "\n")


def kind_of(directory: str | Path) -> str | None:
    """``MODEL``, ``EXPORT`` or ``PLOTS`` if this toolkit wrote ``directory`` (by its marker, or
    by the files an earlier version wrote), else None."""
    d = Path(directory)
    if not d.is_dir():
        return None
    try:
        marker = json.loads((d / MARKER).read_text(encoding="utf-8"))
        if isinstance(marker, dict) and marker.get("seq2seqkit") in (MODEL, EXPORT, PLOTS):
            return marker["seq2seqkit"]
    except (OSError, ValueError):
        pass
    if (d / "config.yaml").is_file() and (d / "tokenizers.json").is_file():
        if (d / "checkpoints").is_dir():
            return MODEL
        if (d / "model.bin").is_file() and (d / "config.json").is_file():
            return EXPORT
    return None


def _known(directory: Path, kind: str) -> set[str]:
    return (MODEL_FILES if kind == MODEL else EXPORT_FILES) | _manifest_files(directory)


def _is_ours(directory: Path, kind: str, entry: Path, known: set[str]) -> bool:
    """Whether ``entry``, in ``directory`` or in its checkpoints/ or tensorboard/, is a name the
    toolkit writes there (or an interrupted atomic write of one)."""
    m = TEMPORARY.fullmatch(entry.name)
    name = m.group("name") if m and not entry.is_dir() else entry.name
    if entry.parent != directory:
        if kind != MODEL or entry.is_dir():
            return False
        return (entry.parent.name == "checkpoints" and name.endswith(".pt")
                or entry.parent.name == "tensorboard" and name.startswith("events.out.tfevents."))
    return name in known or (kind == EXPORT and re.fullmatch(r"\w+_vocabulary\.(json|txt)", name) is not None)


def few(names: list[str]) -> str:
    """The first three of ``names`` and how many more, for a one-line message."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def foreign_entries(directory: Path, kind: str) -> list[str]:
    """Entries of ``directory`` (relative paths) that the toolkit does not write into a
    directory of ``kind``: a user's files, which make the directory not ours to delete."""
    known = _known(directory, kind)
    foreign = []
    for entry in sorted(directory.iterdir()):
        if not _is_ours(directory, kind, entry, known):
            foreign.append(entry.name)
        elif entry.name in ("checkpoints", "tensorboard") and entry.is_dir():
            foreign += [f"{entry.name}/{p.name}" for p in sorted(entry.iterdir())
                        if not _is_ours(directory, kind, p, known)]
    return foreign


def owner_of(path: str | Path) -> Path | None:
    """The model directory or export that ``path`` (symbolic links resolved) is one of the
    toolkit's own files of, if any: such a file is not a place for other output."""
    p = Path(path).resolve()
    for d in (p.parent, p.parent.parent):
        kind = kind_of(d)
        if kind and _is_ours(d, kind, p, _known(d, kind)):
            return d
    return None


def open_plot_dir(directory: str | Path) -> Path:
    """``s2s generate --plot-attention DIR``: a new or empty directory, marked as the toolkit's,
    or one that an earlier ``--plot-attention`` wrote, whose PNGs are removed first (so the
    directory holds this run's plots alone). A directory holding anything else is refused: its
    files are not the toolkit's to overwrite."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UserError(f"--plot-attention {d}: not a directory")
    if d.is_dir():
        ours = kind_of(d) == PLOTS
        foreign = [e.name for e in sorted(d.iterdir())
                   if not (e.name == MARKER or ours and e.is_file() and PLOT_NAME.fullmatch(e.name))]
        if foreign:
            shown = few(foreign)
            raise UserError(f"--plot-attention {d}: holds files seq2seq-kit did not write there ({shown}); give a new "
                            f"or empty directory")
        for e in d.iterdir():
            if e.name != MARKER:
                e.unlink()
    d.mkdir(parents=True, exist_ok=True)
    write_marker(d, PLOTS)
    return d


def check_ours(directory: Path, kind: str, action: str) -> None:
    """Refuse (one line) unless ``directory`` is a ``kind`` directory this toolkit wrote and
    holds nothing else; ``action`` says what was about to happen (\"delete it\")."""
    what = "model directory" if kind == MODEL else "CTranslate2 export"
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory; will not {action}")
    if kind_of(directory) != kind:
        raise UserError(f"{directory}: not a {what} written by seq2seq-kit; will not {action}")
    foreign = foreign_entries(directory, kind)
    if foreign:
        shown = few(foreign)
        raise UserError(f"{directory}: holds files seq2seq-kit did not write ({shown}); will not {action}")


class RunLock:
    """An exclusive ``flock`` on ``DIRECTORY/.seq2seqkit.lock``, holding the owner's pid.

    Released by :meth:`release` or, whatever happens to the process, by the kernel when the
    file is closed. The lock belongs to this object's open file: a second ``RunLock`` on the
    same directory is refused even within one process."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise UserError(f"{self.path}: cannot open the run lock: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.directory}: in use by another run (process {holder}); wait for it to finish "
                            f"or stop it") from None
        except OSError as e:  # a file system without locks
            os.close(fd)
            raise UserError(f"{self.path}: cannot lock the model directory: {e.strerror}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:  # e.g. a full disk: the lock holds all the same, only its pid is not shown
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no pid left behind: the directory is free
        except OSError:
            pass
        os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def remove_stale_temporaries(directory: Path) -> tuple[int, int]:
    """Delete the temporary files of interrupted atomic writes in a model directory (the
    caller holds its lock, so no write of ours is under way); returns (files, bytes).
    Only names of the form ``.NAME.XXXXXXXX.tmp`` where NAME is a file the toolkit writes there."""
    known = _known(directory, MODEL)
    stale = [p for p in [*directory.glob(".*.tmp"), *(directory / "checkpoints").glob(".*.tmp")]
             if TEMPORARY.fullmatch(p.name) and _is_ours(directory, MODEL, p, known)]
    count = size = 0
    for p in stale:
        try:
            if p.is_file() and not p.is_symlink():
                n = p.stat().st_size
                p.unlink()
                count, size = count + 1, size + n
        except FileNotFoundError:
            pass
    if count:
        shown = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} bytes"
        log.info("%s: removed %d stale temporary file%s (%s) left by an interrupted run",
                 directory, count, "s" * (count != 1), shown)
    return count, size


def open_run(directory: str | Path, resume: bool) -> RunLock:
    """Claim ``directory`` for a training run: it must be missing, empty or a model directory
    this toolkit wrote (a resumed run: a model directory). Returns the held lock; the marker is
    written and stale temporary files are removed under it."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UserError(f"{d}: exists and is not a directory; choose another output_dir")
    if resume and kind_of(d) != MODEL:
        raise UserError(f"{d}: not a seq2seq-kit model directory (nothing to resume)")
    if d.is_dir() and kind_of(d) != MODEL and any(p.name != LOCK for p in d.iterdir()):
        raise UserError(f"{d}: exists, is not empty and is not a seq2seq-kit model directory; "
                        f"choose another output_dir")
    d.mkdir(parents=True, exist_ok=True)
    lock = RunLock(d).acquire()
    try:
        if not (d / MARKER).is_file():
            write_marker(d, MODEL)
        remove_stale_temporaries(d)
    except BaseException:
        lock.release()
        raise
    return lock


def scratch_dir(beside: Path, suffix: str) -> Path:
    """A new, uniquely named hidden directory beside ``beside`` (``.NAME.PID.XXXXXXXX`` + ``suffix``,
    ``.tmp`` while building, ``.old`` while swapping), with the usual permissions. Its name
    carries this process's id, so a later run can tell an abandoned one from one that a live
    process is still building (:func:`abandoned_scratch`): two runs writing the same target
    never delete each other's work."""
    path = Path(tempfile.mkdtemp(prefix=f".{beside.name}.{os.getpid()}.", suffix=suffix, dir=beside.parent))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)  # mkdtemp makes 0700
    return path


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def abandoned_scratch(beside: Path) -> list[Path]:
    """The :func:`scratch_dir` directories of ``beside`` whose process is gone (killed before it
    could clean up); a running process's are not listed."""
    pattern = re.compile(rf"\.{re.escape(beside.name)}\.(\d+)\.[A-Za-z0-9_]{{8}}\.(tmp|old)")
    if not beside.parent.is_dir():
        return []
    return [path for path in sorted(beside.parent.iterdir())
            if (match := pattern.fullmatch(path.name)) and path.is_dir() and not path.is_symlink()
            and not process_alive(int(match[1]))]


def remove_model_dir(directory: str | Path, name: str | None = None) -> None:
    """Delete a model directory this toolkit wrote (``s2s demo --retrain``), refusing anything
    else: a directory it did not write, one holding a user's files, one a run is using, and
    (``name`` given) one whose config is not named ``name``: ``--retrain`` deletes an earlier
    demo model, not another model the toolkit trained (days of a user's training)."""
    d = Path(directory)
    if d.is_symlink():
        raise UserError(f"{d}: is a symbolic link; will not delete it (give the directory itself)")
    check_ours(d, MODEL, "delete it")
    with RunLock(d):
        if name is not None:
            from .config import read_saved_config

            try:
                found = read_saved_config(d / "config.yaml").get("name")
            except ConfigError:
                found = None
            if found != name:
                held = f"the model {found!r}" if isinstance(found, str) else "a model whose config.yaml cannot be read"
                raise UserError(f"{d}: holds {held}, not a {name!r} model; will not delete it (choose another "
                                f"directory, or delete it yourself)")
        shutil.rmtree(d)
