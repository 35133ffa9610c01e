"""Multi30k German->English benchmark: the three model families on the same data and vocabulary.

    python bench/multi30k.py                    # train what is unfinished, evaluate, print tables
    python bench/multi30k.py --record           # ... and append them to BENCHMARKS.md
    python bench/multi30k.py --no-train         # only evaluate the existing model directories
    python bench/multi30k.py A.yaml B.yaml --limit 30 --plot /tmp/p.png   # a smoke run

Run it from the repository root: the configs name the data relative to it. For each config
(default: configs/multi30k-{rnn,attention,transformer}.yaml), a model directory that already
holds a finished run is evaluated as it is; an unfinished one is resumed. The checkpoint
scored is the best single one or the average of the kept epoch checkpoints, whichever has the
higher greedy BLEU on the config's ``data.dev`` (val; the test set plays no part). It is
scored on ``data.test`` (test_2016_flickr) with greedy search and with beam search (beam 5,
GNMT length penalty ``--length-penalty``, by default the best on val): sacreBLEU (13a tokenization) and chrF on cased,
detokenized output, with their signatures. A second table and a PNG give
corpus BLEU of the greedy output by source length in whitespace words (``--buckets``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import (REPO, add_arguments, by_bucket, decode, duration, machine, model_label,  # first: s2s's process
                    parse_arguments, parse_buckets, plot_lines, record, repo_path,  # settings, before torch loads
                    trained_translator)

from seq2seqkit import metrics as M
from seq2seqkit.config import SearchConfig, load_config
from seq2seqkit.evaluate import load_eval_set
from seq2seqkit.translate import Translator

DEFAULT_CONFIGS = [f"configs/multi30k-{family}.yaml" for family in ("rnn", "attention", "transformer")]
DEFAULT_PLOT = REPO / "bench" / "multi30k-bleu-by-length.png"
# Upper bounds of the source-length buckets (whitespace words); the last bucket is open.
# Multi30k captions are short (test_2016_flickr: median 10 words, 26 of 1000 longer than 20),
# so these give every bucket 100-280 sentences; ``--buckets 10,15,20,25`` gives the classic
# wider ones, whose top buckets then hold only a few dozen sentences.
DEFAULT_BUCKETS = "8,10,12,15"
LENGTH_PENALTIES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]  # GNMT alphas tried on val when --length-penalty is not given


def tune_length_penalty(tr: Translator, dev, beam: int, alphas: list[float]) -> tuple[float, dict[float, float]]:
    """The GNMT alpha with the best beam-search BLEU on the dev set (val), and each one's BLEU."""
    base = tr.cfg.search.model_dump()
    bleu = {}
    for alpha in alphas:
        hyps, _ = decode(tr, dev.sources, SearchConfig(**{**base, "beam_size": beam, "nbest": 1, "sample": False,
                                                            "length_penalty": alpha}))
        bleu[alpha] = M.score(hyps, dev.refs, ["bleu"]).values["bleu"]
    return max(alphas, key=lambda a: bleu[a]), bleu


def run(config: str, train: bool, beam: int, length_penalty: float | None, limit: int | None,
        buckets: list[tuple[int, int | None]]) -> dict:
    cfg = load_config(config)
    if not cfg.data.test.is_set:
        sys.exit(f"{config}: data.test is not set: nothing to evaluate on")
    alpha_bleu = {}
    dev = load_eval_set(*cfg.data.dev.files(), fmt=cfg.data.dev.format) if cfg.data.dev.is_set else None
    progress, tr, checkpoint, dev_bleu = trained_translator(cfg, train, dev, "bleu")
    if length_penalty is None:
        if dev is None:
            sys.exit(f"{config}: no data.dev to tune the length penalty on; pass --length-penalty")
        length_penalty, alpha_bleu = tune_length_penalty(tr, dev, beam, LENGTH_PENALTIES)
    test = cfg.data.test
    data = load_eval_set(*test.files(), fmt=test.format)
    sources, refs = data.sources[:limit], data.refs[:limit]

    base = tr.cfg.search.model_dump()
    greedy = SearchConfig(**{**base, "beam_size": 1, "nbest": 1, "sample": False})
    beamed = SearchConfig(**{**base, "beam_size": beam, "nbest": 1, "sample": False, "length_penalty": length_penalty})
    hyps_greedy, greedy_s = decode(tr, sources, greedy)
    hyps_beam, beam_s = decode(tr, sources, beamed)
    s_greedy = M.score(hyps_greedy, refs, ["bleu", "chrf"])
    s_beam = M.score(hyps_beam, refs, ["bleu", "chrf"])

    by_length = []
    for name, idx in by_bucket([len(s.split()) for s in sources], buckets):
        bleu = M.score([hyps_greedy[i] for i in idx], [refs[i] for i in idx], ["bleu"]).values["bleu"] if idx else None
        by_length.append((name, len(idx), bleu))

    return {
        "config": config, "name": cfg.name, "model": model_label(tr.cfg), "params": tr.model.num_parameters(),
        "checkpoint": checkpoint, "dev_bleu": dev_bleu, "alpha": length_penalty, "alpha_bleu": alpha_bleu, "steps": progress["step"], "epochs": progress["epoch"], "train_s": progress.get("train_seconds", 0.0),
        "sentences": len(sources), "test_size": len(data.sources), "test": test.src or test.path,
        "bleu_greedy": s_greedy.values["bleu"], "bleu_beam": s_beam.values["bleu"],
        "chrf_greedy": s_greedy.values["chrf"], "chrf_beam": s_beam.values["chrf"],
        "greedy_s": greedy_s, "beam_s": beam_s, "signatures": s_greedy.signatures, "by_length": by_length,
    }


def scores_table(rows: list[dict], beam: int) -> str:
    head = (f"| model | config | parameters | steps (epochs) | training time | checkpoint (val BLEU) | BLEU greedy "
            f"| BLEU beam {beam} (α) | chrF greedy | chrF beam {beam} | decoding greedy / beam {beam} |\n")
    head += "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| {r['model']} | `{r['config']}` | {r['params']:,} | {r['steps']} ({r['epochs']}) | {duration(r['train_s'])} | "
        f"{checkpoint_cell(r)} | "
        f"{r['bleu_greedy']:.2f} | {r['bleu_beam']:.2f} (α {r['alpha']:g}) | {r['chrf_greedy']:.2f} | {r['chrf_beam']:.2f} | "
        f"{r['greedy_s']:.1f} s / {r['beam_s']:.1f} s |\n"
        for r in rows
    )


def checkpoint_cell(r: dict) -> str:
    """``averaged (36.1 vs best 35.2)``: the checkpoint chosen on val, and the candidates' val BLEU."""
    scores = r["dev_bleu"]
    if not scores:
        return r["checkpoint"]
    others = ", ".join(f"{n} {v:.1f}" for n, v in scores.items() if n != r["checkpoint"])
    return f"{r['checkpoint']} ({scores[r['checkpoint']]:.1f}" + (f" vs {others})" if others else ")")


def length_table(rows: list[dict]) -> str:
    """BLEU per source-length bucket; the header counts the sentences of the first config's
    test set (all default configs share one)."""
    cols = [f"{name} ({n})" for name, n, _ in rows[0]["by_length"]]
    head = "| model | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols) + "\n"
    return head + "".join(
        f"| {r['model']} | " + " | ".join("–" if b is None else f"{b:.2f}" for _, _, b in r["by_length"]) + " |\n"
        for r in rows
    )


def plot_by_length(rows: list[dict], path: Path) -> None:
    """One line per config: corpus BLEU (greedy) over the source-length buckets, as a PNG."""
    plot_lines([(f"{r['name']}: {r['model']}", [b for _, _, b in r["by_length"]]) for r in rows],
               [f"{name}\n(n={n})" for name, n, _ in rows[0]["by_length"]], "source length (words)", "BLEU (greedy)",
               f"Multi30k de→en, BLEU by source length ({rows[0]['sentences']} test sentences)", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", default=DEFAULT_CONFIGS, help=f"default: {' '.join(DEFAULT_CONFIGS)}")
    add_arguments(ap, beam=5, limit="evaluate only the first N test sentences")
    ap.add_argument("--length-penalty", type=float, default=None,
                    help=f"GNMT length penalty alpha for beam search (0 ranks by raw log-probability); default: "
                         f"the best on val of {LENGTH_PENALTIES}")
    ap.add_argument("--buckets", type=parse_buckets, default=parse_buckets(DEFAULT_BUCKETS), metavar="B1,B2,...",
                    help=f"upper bounds of the source-length buckets in words (default {DEFAULT_BUCKETS})")
    ap.add_argument("--plot", type=Path, default=DEFAULT_PLOT, metavar="PATH",
                    help="where the BLEU-by-length PNG goes (default: bench/multi30k-bleu-by-length.png)")
    args = parse_arguments(ap)

    rows = [run(c, not args.no_train, args.beam, args.length_penalty, args.limit, args.buckets) for c in args.configs]
    plot_by_length(rows, args.plot)
    limited = f", first {args.limit}" if args.limit else ""
    size = (f"first {rows[0]['sentences']} of {rows[0]['test_size']}" if rows[0]["sentences"] < rows[0]["test_size"]
            else str(rows[0]["sentences"]))
    scores = (f"Test set `{rows[0]['test']}` ({size} sentences); beam {args.beam} with "
              f"length penalty {'tuned on val' if args.length_penalty is None else f'{args.length_penalty:g}'}. "
              f"Checkpoint: the best single one (by val BLEU during "
              f"training) or the average of the last kept epochs, whichever scores higher on val (greedy).  \n"
              + "".join(f"{k} signature: `{v}`  \n" for k, v in rows[0]["signatures"].items())
              + "\n" + scores_table(rows, args.beam))
    lengths = (f"BLEU (greedy) by source length in words (sentences per bucket in brackets); plot: `{repo_path(args.plot)}`\n\n"
               + length_table(rows))
    tuned = [r for r in rows if r["alpha_bleu"]]
    if tuned:
        alphas = sorted(tuned[0]["alpha_bleu"])
        scores += (f"\nLength penalty: beam {args.beam} BLEU on val for each GNMT α (the best is used on test)\n\n"
                   "| model | " + " | ".join(f"α {a:g}" for a in alphas) + " |\n|---|" + "---:|" * len(alphas) + "\n"
                   + "".join(f"| {r['model']} | " + " | ".join(f"{r['alpha_bleu'][a]:.2f}" for a in alphas) + " |\n"
                             for r in tuned))
    print(f"{scores}\n{lengths}")
    if args.record:
        split = Path(rows[0]["test"]).name.split(".")[0]  # test_2016_flickr.de.gz -> test_2016_flickr
        record(f"Multi30k de→en ({split}{limited})", f"{scores}\n{lengths}")
    print(f"machine: {machine()}", file=sys.stderr)


if __name__ == "__main__":
    main()
