"""Helpers shared by the benchmark scripts (``bench/*.py``): the machine line, training a
config's model directory to completion, and appending results to BENCHMARKS.md.

The scripts are run as ``python bench/NAME.py`` from the repository root, which puts this
directory on ``sys.path``, so they import this module as ``common``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from seq2seqkit.runtime import configure_process

# The benchmarks measure what `s2s` runs, so they apply its process settings before torch loads
# (all but the malloc tuning for `bench/profile_step.py --glibc-default-malloc`).
configure_process(malloc="--glibc-default-malloc" not in sys.argv)

import torch  # noqa: E402

from seq2seqkit.checkpoint import epoch_checkpoints, load_checkpoint, write_average
from seq2seqkit.config import Config
from seq2seqkit.evaluate import EvalSet, evaluate_model
from seq2seqkit.training import Trainer, load_for_resume, lower_is_better
from seq2seqkit.translate import Translator

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"
BENCHMARKS_TITLE = "# Benchmarks\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread{'s' * (torch.get_num_threads() != 1)}"


def ensure_trained(cfg: Config, train: bool = True) -> dict:
    """Train ``cfg``'s model directory if it holds no finished run (resume a partial one, start
    a missing one); return the training progress saved in its last checkpoint. With ``train``
    False nothing is trained: the directory must already hold a checkpoint."""
    out = Path(cfg.output_dir)
    last = out / "checkpoints" / "last.pt"
    if train:
        if not last.exists():
            Trainer(cfg).train()
        elif not load_checkpoint(last)["progress"]["done"]:
            Trainer(load_for_resume(out, []), resume=True).train()
    return load_checkpoint(last)["progress"]


def select_checkpoint(cfg: Config, dev: EvalSet, metric: str) -> tuple[str, dict[str, float]]:
    """Choose between the best single checkpoint and the average of the kept epoch checkpoints
    (written here as ``checkpoints/averaged.pt``) by greedy ``metric`` on the dev set, so the
    test set plays no part in the choice. Returns the name to load and each candidate's score."""
    kept = epoch_checkpoints(Path(cfg.output_dir) / "checkpoints")
    candidates = ["best"]
    if len(kept) >= 2:
        write_average(Path(cfg.output_dir), len(kept))
        candidates.append("averaged")
    dev_scores = {}
    for name in candidates:
        tr = Translator.load(cfg.output_dir, checkpoint=name)
        tr.cfg.search = tr.cfg.search.model_copy(update={"beam_size": 1, "nbest": 1, "sample": False})
        dev_scores[name] = evaluate_model(tr, dev, [metric])[0].values[metric]
    pick = (min if lower_is_better(metric) else max)(candidates, key=lambda n: dev_scores[n])
    return pick, dev_scores


def dev_curve(model_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(epoch, dev metric) of every validation in ``train_log.jsonl``, in the order they ran.
    A list, not a dict by epoch: logs from before the trainer's epoch-numbering fix label the
    validation that ends epoch N with N + 1, and a run resumed across the fix has a label twice."""
    curve = []
    for line in (model_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("kind") == "valid" and metric in entry:
            curve.append((entry["epoch"], entry[metric]))
    return curve


def duration(seconds: float) -> str:
    """A wall-clock time for a table: seconds, minutes or hours, whichever reads best."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def command_line() -> str:
    """How this benchmark was run, e.g. ``python bench/g2p.py configs/g2p-rnn.yaml --record``."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return shlex.join(["python", script.as_posix(), *sys.argv[1:]])


def record(heading: str, body: str) -> None:
    """Append a section to BENCHMARKS.md (created with a title if missing): the heading with
    today's date, the machine, the command line, then ``body`` (Markdown)."""
    stamp = dt.date.today().isoformat()
    new = not BENCHMARKS.exists()
    with open(BENCHMARKS, "a", encoding="utf-8") as f:
        if new:
            f.write(BENCHMARKS_TITLE)
        f.write(f"\n### {heading} — {stamp}\n\nMachine: {machine()}  \nCommand: `{command_line()}`\n\n{body}")
