"""Time to quality on this machine: our Multi30k Transformer recipe for 32 minutes against
JoeyNMT 2.3.0's, dev BLEU against wall-clock minutes in one plot.

    python bench/time_to_quality.py                      # both: ~32 + ~100 minutes on 2 cores
    python bench/time_to_quality.py --only ours          # our side alone
    python bench/time_to_quality.py --only joeynmt       # JoeyNMT alone (its own venv, made on first use)
    python bench/time_to_quality.py --no-train           # table and plot from the runs as they are

Run it on a quiet machine: wall-clock minutes are the measure.

* **Ours**: ``s2s train configs/multi30k-transformer-32min.yaml`` as a user runs it (the command
  itself, in a subprocess; on jemalloc where the system has it), stopped with SIGTERM if it has
  not finished after ``--minutes`` (default 32) from its start; then ``s2s average --last 3`` and
  ``s2s evaluate --beam 5`` on dev and test of the best epoch and of the average. Its curve is
  the greedy dev BLEU of each epoch's validation.
* **JoeyNMT 2.3.0** (``bench/joeynmt_runner.py``: its own venv, our data and joint SentencePiece
  model, the same architecture, batch size and schedule as our 37-epoch recipe,
  ``configs/multi30k-transformer.yaml``): ``--joey-epochs`` epochs (default 8), a greedy
  validation every ``--joey-validate`` updates (its curve), then ``joeynmt test`` with beam 5 on
  dev and test of its best checkpoint (by dev BLEU).

Minutes on the x axis run from each toolkit's start of training (after data loading and
vocabulary set-up; ours reads a cached shards entry or tokenizes, printed beside the table),
validations included. Runs live in ``--work`` (default ``~/.cache/seq2seqkit/bench/ttq``); the
plot goes to ``--plot``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import REPO, machine  # first: s2s's process settings, before torch loads

import joeynmt_runner as joey  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CONFIG = REPO / "configs" / "multi30k-transformer-32min.yaml"
TARGET_DEV = 38.70  # issue 17: beam-5 dev BLEU within 32 minutes (the JoeyNMT figure after 8 epochs)
S2S = [sys.executable, "-m", "seq2seqkit"]
JOEY_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ - \w+ - [\w.]+ - (.*)$")
JOEY_EPOCH = re.compile(r"^EPOCH (\d+)$")
JOEY_RESULT = re.compile(r"^Evaluation result \((greedy|beam search)\): bleu:\s+([\d.]+)")
JOEY_DECODING = re.compile(r"^Decoding on (\w+) set")
SCORE = re.compile(r"BLEU ([\d.]+) \| chrF ([\d.]+)")


def data_args(split: str, data: Path) -> list[str]:
    return ["--src", str(data / f"{split}.de.gz"), "--ref", str(data / f"{split}.en.gz")]


def evaluate(model: Path, checkpoint: str, split: str, data: Path) -> tuple[float, float]:
    out = subprocess.run([*S2S, "evaluate", "-m", str(model), "--checkpoint", checkpoint, *data_args(split, data),
                          "--beam", "5", "--metrics", "bleu", "chrf"], capture_output=True, text=True, check=True)
    m = SCORE.search(out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(1)), float(m.group(2))


def run_ours(work: Path, minutes: float, data: Path) -> dict:
    """Train (or keep a finished run), average the last 3 epochs, score best and average with beam 5."""
    out = work / "ours"
    if not (out / "checkpoints" / "best.pt").exists():
        overrides = [f"output_dir={out}", *(f"data.{s}.{side}={data}/{f}.{lang}.gz" for s, f in
                                            (("train", "train"), ("dev", "val"), ("test", "test_2016_flickr"))
                                            for side, lang in (("src", "de"), ("tgt", "en")))]
        start = time.monotonic()
        proc = subprocess.Popen([*S2S, "train", str(CONFIG), *overrides], cwd=REPO)
        try:
            proc.wait(timeout=minutes * 60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # finishes the update, saves a checkpoint, exits
            proc.wait()
        print(f"ours: trained for {(time.monotonic() - start) / 60:.1f} min (exit {proc.returncode})", file=sys.stderr)
    if not (out / "checkpoints" / "last3.pt").exists() or \
            (out / "checkpoints" / "last3.pt").stat().st_mtime < (out / "checkpoints" / "last.pt").stat().st_mtime:
        subprocess.run([*S2S, "-q", "average", str(out), "--last", "3", "--output", "last3"], check=True,
                       stdout=subprocess.DEVNULL)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    curve = [(e["time_s"] / 60, e["bleu"]) for e in log if e["kind"] == "valid" and "bleu" in e]
    cache = out / "ttq-scores.json"  # scores of these checkpoints, kept while they are unchanged
    stamp = {name: (out / "checkpoints" / f"{name}.pt").stat().st_mtime for name in ("best", "last3")}
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    if saved.get("stamp") == stamp:
        scores = saved["scores"]
    else:
        scores = {name: {split: evaluate(out, name, split, data) for split in ("val", "test_2016_flickr")}
                  for name in ("best", "last3")}
        cache.write_text(json.dumps({"stamp": stamp, "scores": scores}))
    return {"curve": curve, "scores": scores, "epochs": len(curve), "peak_rss_mib": max(
        (e.get("rss_peak_mib", 0) for e in log), default=0)}


def joey_log(log: str) -> tuple[list[tuple[float, float, int]], dict[str, float]]:
    """JoeyNMT's log: its validations as (minutes since its first epoch began, greedy dev BLEU,
    epoch) each, and the beam-search BLEU of each set ``joeynmt test`` decoded (dev, test)."""
    t0, epoch, split = None, 0, None
    points: list[tuple[float, float, int]] = []
    scores: dict[str, float] = {}
    for line in log.splitlines():
        m = JOEY_LINE.match(line)
        if not m:
            continue
        when, text = dt.datetime.fromisoformat(m.group(1)), m.group(2)
        if e := JOEY_EPOCH.match(text):
            epoch = int(e.group(1))
            t0 = t0 or when
        elif d := JOEY_DECODING.match(text):
            split = d.group(1)
        elif r := JOEY_RESULT.match(text):
            if r.group(1) == "greedy" and t0 is not None and split is None:
                points.append(((when - t0).total_seconds() / 60, float(r.group(2)), epoch))
            elif split is not None:
                scores[split] = float(r.group(2))
    return points, scores


def run_joeynmt(work: Path, epochs: int, validate_every: int, data_dir: Path) -> dict:
    """Train JoeyNMT (or keep a finished run), then score its best checkpoint with beam 5."""
    py = joey.ensure_venv()
    jw = work / "joeynmt"
    jw.mkdir(parents=True, exist_ok=True)
    model_dir, log_file = jw / "model", jw / "train.log"
    spm = work / "ours" / "src.spm.model"  # our joint 8k SentencePiece model: the same segmentation
    if not spm.exists():
        raise SystemExit(f"{spm}: missing; run our side first (--only ours) for the shared vocabulary")
    sys.path.insert(0, str(REPO))
    from seq2seqkit.data.tokenizers import load_tokenizers

    src_tok, _ = load_tokenizers(work / "ours")
    vocab = joey.write_vocab([src_tok.id_to_piece(i) for i in range(src_tok.vocab_size)], jw / "vocab.txt")
    data = joey.write_data(data_dir, jw)
    cfg = joey.joey_config("transformer", data, spm, vocab, model_dir, updates=10**9, log_every=50)
    cfg["name"] = "ttq-transformer"
    cfg["training"].update({"epochs": epochs, "validation_freq": validate_every, "early_stopping_metric": "bleu",
                            "keep_best_ckpts": 1, "overwrite": True})
    if not (model_dir / "best.ckpt").exists():
        path = jw / "train.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        t0 = time.monotonic()
        with log_file.open("w") as f:
            rc = subprocess.run([str(py), "-m", "joeynmt", "train", str(path), "--skip-test"], stdout=f,
                                stderr=subprocess.STDOUT).returncode
        if rc:
            raise SystemExit(f"JoeyNMT training failed ({rc}): see {log_file}")
        print(f"joeynmt: trained for {(time.monotonic() - t0) / 60:.1f} min", file=sys.stderr)
    test_cfg = dict(cfg, testing={**cfg["testing"], "beam_size": 5, "beam_alpha": 1.0,
                                  "load_model": str(model_dir / "best.ckpt")})
    test_path = jw / "test.yaml"
    test_path.write_text(yaml.safe_dump(test_cfg, sort_keys=False), encoding="utf-8")
    test_log = jw / "test.log"  # kept while the best checkpoint is unchanged
    if not test_log.exists() or test_log.stat().st_mtime < (model_dir / "best.ckpt").stat().st_mtime:
        out = subprocess.run([str(py), "-m", "joeynmt", "test", str(test_path)], capture_output=True, text=True)
        test_log.write_text(out.stdout + out.stderr, encoding="utf-8")
    _, scores = joey_log(test_log.read_text(encoding="utf-8"))
    points, _ = joey_log(log_file.read_text(encoding="utf-8", errors="replace"))
    return {"curve": [(m, b) for m, b, _ in points], "points": points, "scores": scores,
            "minutes": points[-1][0] if points else None}


def plot(ours: dict | None, theirs: dict | None, path: Path) -> None:
    fig = Figure(figsize=(8, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, run in (("seq2seq-kit (multi30k-transformer-32min, bf16)", ours), ("JoeyNMT 2.3.0 (fp32)", theirs)):
        if run and run["curve"]:
            ax.plot(*zip(*run["curve"]), marker="o", markersize=3, label=name)
    ax.axhline(TARGET_DEV, color="grey", linestyle="--", linewidth=1)
    ax.text(1, TARGET_DEV - 1.2, f"target: dev {TARGET_DEV} with beam 5 (issue 17)", fontsize=8, color="grey")
    ax.axvline(32, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("minutes of training (validations included), 2-core CPU")
    ax.set_ylabel("greedy dev BLEU (val)")
    ax.set_title("Multi30k de→en: dev BLEU against wall-clock minutes", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["ours", "joeynmt"])
    ap.add_argument("--no-train", action="store_true", help="report the runs in --work as they are")
    ap.add_argument("--minutes", type=float, default=32.0, help="our training budget (SIGTERM after it)")
    ap.add_argument("--joey-epochs", type=int, default=8)
    ap.add_argument("--joey-validate", type=int, default=300,
                    help="JoeyNMT: updates between validations (300: about one epoch; each takes it 0.5-2.5 minutes)")
    ap.add_argument("--work", type=Path, default=joey.CACHE / "ttq")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "multi30k")
    ap.add_argument("--plot", type=Path, default=REPO / "bench" / "ttq-curves.png")
    args = ap.parse_args()
    ours = theirs = None
    if args.only != "joeynmt" and (not args.no_train or (args.work / "ours" / "train_log.jsonl").exists()):
        ours = run_ours(args.work, args.minutes if not args.no_train else 0, args.data)
    if args.only != "ours" and (not args.no_train or (args.work / "joeynmt" / "train.log").exists()):
        theirs = run_joeynmt(args.work, args.joey_epochs, args.joey_validate, args.data)
    print(f"Machine: {machine()}\n")
    print("| toolkit | run | minutes | greedy dev BLEU (val) |\n|---|---|---:|---:|")
    for name, run in (("seq2seq-kit", ours), ("JoeyNMT 2.3.0", theirs)):
        for i, (m, b) in enumerate(run["curve"] if run else []):
            print(f"| {name} | {i + 1} | {m:.1f} | {b:.2f} |")
    if ours:
        print("\nours, beam 5:", ", ".join(f"{ck} val {s['val'][0]:.2f} / test {s['test_2016_flickr'][0]:.2f}"
                                           for ck, s in ours["scores"].items()),
              f"(after {ours['curve'][-1][0]:.1f} min, {ours['epochs']} epochs; peak RSS {ours['peak_rss_mib']:,.0f} MiB)")
    if theirs:
        print(f"JoeyNMT, beam 5, best checkpoint: {theirs['scores']} (training {theirs['minutes'] or 0:.1f} min)")
    plot(ours, theirs, args.plot)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
