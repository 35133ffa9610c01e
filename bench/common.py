"""Helpers shared by the benchmark scripts (``bench/*.py``): the machine line, training a
config's model directory to completion, and appending results to BENCHMARKS.md.

The scripts are run as ``python bench/NAME.py`` from the repository root, which puts this
directory on ``sys.path``, so they import this module as ``common``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from seq2seqkit.runtime import configure_process

# The benchmarks measure what `s2s` runs, so they apply its process settings before torch loads
# (all but the malloc tuning for `bench/profile_step.py --glibc-default-malloc`).
configure_process(malloc="--glibc-default-malloc" not in sys.argv)

import torch  # noqa: E402

from seq2seqkit.checkpoint import atomic_write_bytes, epoch_checkpoints, load_checkpoint, write_average
from seq2seqkit.config import Config, SearchConfig
from seq2seqkit.evaluate import EvalSet, evaluate_model
from seq2seqkit.training import Trainer, load_for_resume
from seq2seqkit.translate import Translator
from seq2seqkit.validation import lower_is_better

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


def trained_translator(cfg: Config, train: bool, dev: EvalSet | None, metric: str) -> tuple[dict, Translator, str, dict]:
    """A config's model ready to score: trained to completion (:func:`ensure_trained`), torch's
    thread count from ``training.num_threads`` where set, and the checkpoint chosen on ``dev`` by
    greedy ``metric`` (:func:`select_checkpoint`; the best one when ``dev`` is None). Returns the
    training progress, the loaded translator, the checkpoint's name and each candidate's dev score."""
    progress = ensure_trained(cfg, train)
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    checkpoint, dev_scores = select_checkpoint(cfg, dev, metric) if dev is not None else ("best", {})
    return progress, Translator.load(cfg.output_dir, checkpoint=checkpoint), checkpoint, dev_scores


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


# ------------------------------------------------------------------ decoding and tuning on dev
def model_label(cfg: Config) -> str:
    """What a table calls a model: its family and size, e.g. ``attention (bahdanau, bi-GRU 256)``;
    ``+ copy`` where the config turns the copy mechanism on."""
    m = cfg.model
    if m.family == "transformer":
        label = f"transformer ({m.encoder_layers}+{m.decoder_layers} layers, d {m.embed_dim}, {m.norm}-norm)"
    else:
        rnn = f"{'bi-' if m.bidirectional else ''}{m.cell.upper()} {m.hidden_size}"
        label = f"attention ({m.attention}, {rnn})" if m.family == "attention" else f"rnn ({rnn}, no attention)"
    if m.copy_attn:
        label += " + copy" + (" + coverage" if m.coverage else "")
    return label


def search_config(tr: Translator, **update) -> SearchConfig:
    """``tr``'s search settings with ``update`` applied and validated (one output, no sampling
    unless ``update`` asks for it)."""
    return SearchConfig(**{**tr.cfg.search.model_dump(), "nbest": 1, "sample": False, **update})


def decode(tr: Translator, sources: list[str], search: SearchConfig) -> tuple[list[str], float]:
    """The outputs of ``sources`` under ``search`` and the seconds the decoding took. ``tr``'s own
    search settings are put back afterwards: :func:`search_config` starts from them, and a greedy
    row built after :func:`tune_search` took the last grid point's settings (SAMSum's greedy would
    have decoded with ``min_len`` 16 and ``no_repeat_ngram_size`` 3)."""
    own, tr.cfg.search = tr.cfg.search, search
    try:
        start = time.perf_counter()
        hyps = tr.translate(sources)
        return hyps, time.perf_counter() - start
    finally:
        tr.cfg.search = own


def tune_search(tr: Translator, sources: list[str], grid: dict[str, list], objective: Callable[[list[str]], float],
                fixed: dict | None = None, seed: int | None = None) -> tuple[dict, list[tuple[dict, float]]]:
    """Search settings chosen on dev data by coordinate ascent over ``grid`` (setting -> values):
    start from each setting's first value, then for each setting in turn try all its values with
    the others at their best so far and keep the best (higher ``objective`` of the outputs; a tie
    keeps the earlier value). ``fixed`` settings apply throughout (e.g. the beam size); ``seed``
    seeds torch before each decoding (sampling: every point is scored on the same draw of the
    random stream, as the test decoding is). Returns the best settings and every (settings,
    score) decoded, in order."""
    tried: dict[tuple, float] = {}

    def score(point: dict) -> float:
        key = tuple(point.items())
        if key not in tried:
            if seed is not None:
                torch.manual_seed(seed)
            hyps, _ = decode(tr, sources, search_config(tr, **(fixed or {}), **point))
            tried[key] = objective(hyps)
        return tried[key]

    best = {k: values[0] for k, values in grid.items()}
    best_score = score(best)
    for key, values in grid.items():
        for value in values:
            point = {**best, key: value}
            if score(point) > best_score:
                best, best_score = point, score(point)
    return best, [(dict(k), v) for k, v in tried.items()]


def spread(n: int, k: int | None) -> list[int]:
    """``k`` indices evenly spread over ``range(n)`` (all of them when ``k`` is None or >= n): a
    dev subset for tuning that is the same on every run and covers the whole file."""
    if k is None or k >= n:
        return list(range(n))
    return [i * n // k for i in range(k)]


# ------------------------------------------------------------------------ source-length buckets
def parse_buckets(spec: str) -> list[tuple[int, int | None]]:
    """``"8,10,12,15"`` -> [(1, 8), (9, 10), (11, 12), (13, 15), (16, None)]."""
    try:
        bounds = [int(b) for b in spec.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--buckets {spec!r}: expected increasing integers, e.g. 10,15,20,25") from None
    if not bounds or bounds[0] < 1 or any(b >= c for b, c in zip(bounds, bounds[1:])):
        raise argparse.ArgumentTypeError(f"--buckets {spec!r}: expected increasing positive integers, e.g. 10,15,20,25")
    lows = [1] + [b + 1 for b in bounds]
    return list(zip(lows, [*bounds, None]))


def bucket_name(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else f"{low}-{high}"


def by_bucket(lengths: Sequence[int], buckets: list[tuple[int, int | None]]) -> list[tuple[str, list[int]]]:
    """(bucket name, indices of the items whose length falls in it) for each bucket."""
    return [(bucket_name(low, high), [i for i, n in enumerate(lengths) if n >= low and (high is None or n <= high)])
            for low, high in buckets]


def plot_lines(series: list[tuple[str, list[float | None]]], xlabels: list[str], xlabel: str, ylabel: str,
               title: str, path: Path) -> None:
    """One line per (label, values) over the same x labels (None: no point), written as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":")]  # lines that coincide stay visible
    for k, (label, values) in enumerate(series):
        marker, line = styles[k % len(styles)]
        ax.plot(range(len(values)), [float("nan") if v is None else v for v in values], marker=marker,
                linestyle=line, label=label)
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())


def repo_path(path: Path) -> str:
    """``path`` relative to the repository root where it lies inside it (for a table note)."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def run_time(progress: dict) -> str:
    """The training time a run's last checkpoint recorded, or 'not recorded' (runs from before the counter)."""
    return duration(progress["train_seconds"]) if progress.get("train_seconds") else "not recorded"


def mean_sentence_bleu(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]],
                       weights: tuple[float, ...], smoothing: Callable | None = None) -> float:
    """NLTK's sentence-level BLEU of each tokenized hypothesis against its tokenized references,
    averaged over the items, in percent: how several papers' scripts compute "BLEU-1"/"BLEU-2"
    (not corpus BLEU). An empty hypothesis scores 0 (as those scripts do, which catch NLTK's error)."""
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    total = 0.0
    with warnings.catch_warnings():  # NLTK warns of every n-gram order with no match
        warnings.simplefilter("ignore")
        for hyp, rs in zip(hyps, refs):
            if hyp:
                total += sentence_bleu([list(r) for r in rs], list(hyp), weights=weights, smoothing_function=smoothing)
    return 100.0 * total / len(hyps) if hyps else 0.0


# ----------------------------------------------------------------------------- command line
def add_arguments(ap: argparse.ArgumentParser, beam: int, limit: str) -> None:
    """The options every model benchmark takes: --no-train, --record, --beam (default ``beam``)
    and --limit (``limit``: what the N items are)."""
    ap.add_argument("--no-train", action="store_true", help="only evaluate existing model directories")
    ap.add_argument("--record", action="store_true", help="append the tables to BENCHMARKS.md")
    ap.add_argument("--beam", type=int, default=beam, help=f"beam size of the beam-search evaluation (default {beam})")
    ap.add_argument("--limit", type=int, default=None, metavar="N", help=limit)


def parse_arguments(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, refuse a beam below 2 and a non-positive --limit / --tune-max, and log to stderr."""
    args = ap.parse_args()
    if args.beam < 2:
        ap.error("--beam must be at least 2 (greedy is always evaluated)")
    for name in ("limit", "tune_max"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    return args


def existing(configs: list[str]) -> tuple[list[str], list[str]]:
    """(the configs that exist, those that do not), each missing one noted on stderr: a default
    list may name configs another branch adds."""
    present = [c for c in configs if Path(c).is_file()]
    missing = [c for c in configs if c not in present]
    for config in missing:
        print(f"note: {config} does not exist; skipped", file=sys.stderr)
    return present, missing


def publish(heading: str, text: str, to_benchmarks: bool) -> None:
    """Print a benchmark's tables and, with ``to_benchmarks`` (--record), append them to BENCHMARKS.md."""
    print(text)
    if to_benchmarks:
        record(heading, text)
