"""Speed: training and decoding throughput of our models beside JoeyNMT 2.3.0 and CTranslate2.

    python bench/speed.py                 # everything (~1 h on 2 cores), prints the tables
    python bench/speed.py --record        # ... and appends them to BENCHMARKS.md
    python bench/speed.py --steps 20 --no-joeynmt --no-growth   # a quick look at our side

Two models, the same for both toolkits: (a) Transformer 3+3 layers, d_model 256, 4 heads,
feed-forward 1024 (``configs/multi30k-transformer.yaml``); (b) bidirectional GRU encoder with
additive (Bahdanau) attention, 256-dim embeddings, 512 hidden (``configs/multi30k-attention.yaml``).
Data: Multi30k de->en from ``../shared/data/multi30k``, joint 8k SentencePiece, 4096-token batches.

* Training: each toolkit trains each model for ``--warmup + --steps`` updates from scratch in its
  own process; target tokens/s (real tokens: padding not counted) over the last ``--steps``,
  peak resident memory of the process; ours in fp32 and with the bf16 autocast option
  (``--precisions``). MFU: the step's FLOPs (counted by ``torch.utils.flop_counter`` on sample
  batches) per second, as a share of the matrix-multiply peak of the same dtype (fp32 or bf16)
  measured at the start of the same run.
* Decoding: test_2016_flickr (batch 64: all 1000 sentences; batch 1: the first ``--batch1``),
  greedy and beam 5. The Transformer: one trained model (``--decode-model``, by default
  ``runs/multi30k-transformer``) decoded by ours in PyTorch, by its CTranslate2 export and by
  JoeyNMT running the same weights (imported into a JoeyNMT checkpoint), so all three produce
  the same translations and only the engines differ; without a trained run, and for the
  attention GRU, each toolkit decodes the model it trained above (a model trained for a few
  dozen updates emits degenerate lengths, which differ between toolkits: read tokens/s beside
  the mean length). Sentences/s, tokens/s, and the share of outputs identical to ours.
* Cost growth (PNG beside the tables): decoding time per sentence against output length (EOS
  suppressed to force the length), with and without the KV cache; training time of one epoch
  against corpus size (1/4, 1/2, all).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, record  # first: s2s's process settings, before torch loads

import torch

import joeynmt_runner as joey

DATA = REPO.parent / "shared" / "data" / "multi30k"
CONFIGS = {"transformer": "configs/multi30k-transformer.yaml", "attention": "configs/multi30k-attention.yaml"}
LABELS = {"transformer": "Transformer 3+3, d 256, 4 heads, ff 1024", "attention": "bi-GRU 512 + Bahdanau, emb 256"}
DEFAULT_PLOT = REPO / "bench" / "speed-growth.png"


# ----------------------------------------------------------------------------- measurements
def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of an n x n x n matrix multiply, best of repeated timings."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def our_trainer(family: str, out: Path, extra: list[str] | None = None):
    from seq2seqkit.config import load_config
    from seq2seqkit.training import Trainer

    shutil.rmtree(out, ignore_errors=True)  # the bench's own scratch run: always from scratch
    overrides = [f"output_dir={out}", "data.dev.src=null", "data.dev.tgt=null", "data.test.src=null",
                 "data.test.tgt=null", *(extra or [])]
    # The configs name the data relative to the repository root: workers run with cwd=REPO.
    return Trainer(load_config(REPO / CONFIGS[family], overrides))


def train_worker(family: str, out: Path, warmup: int, steps: int, precision: str, flop_samples: int = 8) -> dict:
    """Runs in a child process: our training, timed as in the module docstring."""
    from torch.utils.flop_counter import FlopCounterMode

    from seq2seqkit.data.dataset import collate, token_batches

    trainer = our_trainer(family, out, [f"training.precision={precision}"])
    data, tc = trainer.train_data, trainer.cfg.training
    batches = token_batches(data.src_lens, data.tgt_lens, tc.batch_tokens, tc.seed, 0)
    if len(batches) < warmup + steps:
        raise SystemExit(f"--warmup + --steps ({warmup + steps}) exceeds the {len(batches)} batches of an epoch")
    for idx in batches[:warmup]:
        trainer.train_step(collate(data, idx))
    tokens, padded, src_tokens, src_padded = 0, 0, 0, 0
    start = time.perf_counter()
    for idx in batches[warmup : warmup + steps]:
        batch = collate(data, idx)
        tokens += batch.n_tokens
        padded += batch.tgt_out.numel()
        src_tokens, src_padded = src_tokens + int(batch.src_lens.sum()), src_padded + batch.src.numel()
        trainer.train_step(batch)
    seconds = time.perf_counter() - start
    flops, flop_tokens = 0, 0
    for idx in batches[warmup : warmup + flop_samples]:  # same batches as timed: FLOPs per real token
        batch = collate(data, idx)
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(batch)
        flops += counter.get_total_flops()
        flop_tokens += batch.n_tokens
    trainer.save("last")
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "steps": steps, "tokens": tokens,
            "padding": 1 - tokens / padded, "src_padding": 1 - src_tokens / src_padded, "flops_per_token": flops / flop_tokens,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params": trainer.model.num_parameters(), "threads": torch.get_num_threads()}


def in_child(*args: str) -> dict:
    """Run this script's ``--worker`` mode in a fresh process (its own peak memory) -> its JSON."""
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def count_tokens(tok, hyps: list[str]) -> int:
    """Output tokens (+ EOS) of detokenized outputs, counted by the shared SentencePiece model."""
    return sum(len(tok.encode(h)) + 1 for h in hyps)


def decode_ours(translator, sources: list[str], runs: list[tuple[str, int, int]]) -> dict:
    out = {}
    for name, beam, bs in runs:
        translator.cfg.search = translator.cfg.search.model_copy(
            update={"beam_size": beam, "batch_size": bs, "length_penalty": 1.0, "max_len_a": 0.0, "max_len_b": 60})
        translator.translate(sources[:bs])  # warm-up
        start = time.perf_counter()
        hyps = translator.translate(sources)
        out[name] = {"seconds": time.perf_counter() - start, "hyps": hyps}
    return out


def decode_runs(batch1: int, total: int) -> list[tuple[str, int, int, int]]:
    """(name, beam, batch size, how many sentences)."""
    return [(f"{search} b{bs}", beam, bs, n) for search, beam in (("greedy", 1), ("beam5", 5))
            for bs, n in ((1, min(batch1, total)), (64, total))]


def decode_all(engine: str, model_dir: Path, sources: list[str], batch1: int, checkpoint: str = "last",
               joey_cfg: Path | None = None, layer_norm_eps: float | None = None) -> dict:
    from seq2seqkit.ct2 import CTranslate2Translator
    from seq2seqkit.translate import Translator

    tr = (None if engine == "joeynmt" else CTranslate2Translator.load(model_dir) if engine == "ctranslate2"
          else Translator.load(model_dir, checkpoint))  # loaded once for all the runs
    results = {}
    plan = decode_runs(batch1, len(sources))
    for n in sorted({n for *_, n in plan}):
        runs = [(name, beam, bs) for name, beam, bs, m in plan if m == n]
        if engine == "joeynmt":
            assert joey_cfg is not None
            results.update(joey.decode(model_dir, joey_cfg, sources[:n], runs, torch.get_num_threads(), layer_norm_eps))
        else:
            results.update(decode_ours(tr, sources[:n], runs))
    return results


def decode_family(family: str, work: Path, sources: list[str], batch1: int, trained: Path | None,
                  joey_cfg: Path | None) -> dict:
    """engine -> decode_all results. With ``trained`` (a finished Transformer run) the Transformer
    rows decode its best checkpoint in every engine: ours, its CTranslate2 export, and JoeyNMT
    running the same weights (:func:`joeynmt_runner.import_transformer`). Otherwise each engine
    decodes the model its own toolkit trained above."""
    from seq2seqkit.ct2 import export_ctranslate2, vocabulary
    from seq2seqkit.translate import Translator

    model_dir, ckpt = (trained, "best") if family == "transformer" and trained else (work / "ours" / family, "last")
    out = {"torch": decode_all("torch", model_dir, sources, batch1, ckpt)}
    if family == "transformer":
        ct2_dir = export_ctranslate2(model_dir, work / "ct2" / family, checkpoint=ckpt, force=True)
        out["ctranslate2"] = decode_all("ctranslate2", ct2_dir, sources, batch1)
    if joey_cfg is None:
        return out
    joey_dir, eps = work / "joeynmt" / family, None
    if family == "transformer" and trained:
        model = Translator.load(trained, ckpt)
        joey_dir, eps = work / "joeynmt-imported", model.model.encoder.layers[0].norm1.eps
        joey_cfg = joey.import_transformer(model.model, vocabulary(model.src_tok), trained / "src.spm.model",
                                           work / "data", joey_dir)
    out["joeynmt"] = decode_all("joeynmt", joey_dir, sources, batch1, joey_cfg=joey_cfg, layer_norm_eps=eps)
    return out


# ----------------------------------------------------------------------------- cost growth
def forced_decode_seconds(model, src: torch.Tensor, lens: torch.Tensor, length: int, cached: bool) -> float:
    """Seconds to generate exactly ``length`` tokens greedily (EOS suppressed)."""
    from seq2seqkit.data.tokenizers import BOS, EOS

    start = time.perf_counter()
    with torch.no_grad():
        enc = model.encode(src, lens)
        prefix = torch.full((src.size(0), 1), BOS, dtype=torch.long)
        state = model.init_state(enc)
        for _ in range(length):
            if cached:
                out = model.decode_step(prefix[:, -1], enc, state)
                logits, state = out.logits, out.state
            else:
                logits = model.decode_step_uncached(prefix, enc)
            logits[:, EOS] = float("-inf")
            prefix = torch.cat([prefix, logits.argmax(-1, keepdim=True)], dim=1)
    return time.perf_counter() - start


def growth_worker(out_root: Path, lengths: list[int]) -> dict:
    """Decoding time per sentence vs output length, and epoch time vs corpus size (child process)."""
    from seq2seqkit.data.dataset import collate, pad_sources, token_batches
    from seq2seqkit.translate import Translator

    result: dict = {"decode": {}, "train": {}}
    for family in [f for f in ("transformer", "attention") if (out_root / f / "checkpoints").is_dir()]:
        tr = Translator.load(out_root / family, "last")
        model = tr.model.eval()
        src, lens = pad_sources([tr.src_tok.encode("Ein Mann mit einem roten Hut fährt Fahrrad auf der Straße.")])
        modes = [("cached", True)] + ([("uncached", False)] if family == "transformer" else [])
        for mode, cached in modes:
            key = f"{family} ({mode})" if family == "transformer" else family
            forced_decode_seconds(model, src, lens, 8, cached)  # warm-up
            result["decode"][key] = [(n, min(forced_decode_seconds(model, src, lens, n, cached) for _ in range(3)))
                                     for n in lengths]
    trainer = our_trainer("transformer", out_root / "growth")
    data, tc = trainer.train_data, trainer.cfg.training
    for share in (0.25, 0.5, 1.0):
        n = int(len(data) * share)
        batches = token_batches(data.src_lens[:n], data.tgt_lens[:n], tc.batch_tokens, tc.seed, 0)
        start = time.perf_counter()
        for idx in batches:
            trainer.train_step(collate(data, idx))
        result["train"][share] = {"pairs": n, "seconds": time.perf_counter() - start}
    return result


def plot_growth(growth: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from seq2seqkit.checkpoint import atomic_write_bytes

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key, points in growth["decode"].items():
        ax1.plot([n for n, _ in points], [s * 1000 for _, s in points], marker="o", label=key)
    ax1.set(xlabel="output length (tokens, EOS suppressed)", ylabel="ms per sentence (batch 1, greedy)",
            title="Decoding cost vs output length")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    shares = sorted(growth["train"], key=float)
    ax2.plot([growth["train"][s]["pairs"] for s in shares], [growth["train"][s]["seconds"] for s in shares], marker="o")
    ax2.set(xlabel="training pairs (1/4, 1/2, all of Multi30k)", ylabel="seconds for one epoch",
            title="Transformer training time vs corpus size")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- tables
def ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def training_table(ours: dict, theirs: dict, peaks: dict[str, float]) -> str:
    """ours[(family, precision)], theirs[family]; MFU against the matmul peak of the step's precision."""
    head = ("| model | toolkit | parameters | target tok/s | vs JoeyNMT | padding (src / tgt) | peak RSS | GFLOP per token "
            "| MFU (same-dtype peak) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for family in dict.fromkeys(f for f, _ in ours):
        j = theirs.get(family)
        for (f, precision), o in ours.items():
            if f != family:
                continue
            mfu = o["flops_per_token"] * o["tokens_per_s"] / peaks[precision]
            rows.append(f"| {LABELS[family]} | seq2seq-kit ({precision}) | {o['params']:,} | {o['tokens_per_s']:.0f} "
                        f"| {ratio(o['tokens_per_s'], j and j['tokens_per_s'])} | {o['src_padding']:.1%} / {o['padding']:.1%} "
                        f"| {o['peak_rss_mib']:.0f} MiB | {o['flops_per_token'] / 1e9:.3f} | {mfu:.1%} ({precision}) |")
        if j:
            n = f"{j['params']:,}" if j.get("params") else "–"
            rows.append(f"| {LABELS[family]} | JoeyNMT 2.3.0 (fp32) | {n} | {j['tokens_per_s']:.0f} | 1.00× | – "
                        f"| {j['peak_rss_mib']:.0f} MiB | – | – |")
    return head + "\n".join(rows) + "\n"


def decoding_table(results: dict, tok, batch1: int, total: int) -> str:
    """results[(family, engine)][run name] = {"seconds", "hyps"}: one row per engine and run.
    Output tokens are counted by one SentencePiece model for every row; "same" is the share of
    outputs identical to ours (100% when two engines run the same weights)."""

    tokens = {(key, name): count_tokens(tok, r["hyps"]) for key, res in results.items() for name, r in res.items()}

    def tok_rate(family: str, engine: str, name: str) -> float | None:
        r = results.get((family, engine), {}).get(name)
        return r and tokens[((family, engine), name)] / r["seconds"]

    head = ("| model | engine | search | batch | sentences | seconds | sent/s | tok/s | mean length | same "
            "| ours vs JoeyNMT (tok/s) | ours vs CTranslate2 (tok/s) |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for name, _, bs, _ in decode_runs(batch1, total):
        for (family, engine), res in results.items():
            r, ours = res[name], results[(family, "torch")][name]
            n, toks = len(r["hyps"]), tokens[((family, engine), name)]
            same = sum(a == b for a, b in zip(r["hyps"], ours["hyps"])) / n
            vs = [ratio(tok_rate(family, "torch", name), tok_rate(family, peer, name)) if engine == "torch" else ""
                  for peer in ("joeynmt", "ctranslate2")]
            rows.append(f"| {LABELS[family]} | {engine} | {name.split()[0]} | {bs} | {n} | {r['seconds']:.2f} | "
                        f"{n / r['seconds']:.1f} | {toks / r['seconds']:.0f} | {toks / n:.1f} | {same:.0%} | {vs[0]} | {vs[1]} |")
    return head + "\n".join(rows) + "\n"


def growth_table(growth: dict) -> str:
    lengths = [n for n, _ in next(iter(growth["decode"].values()))]
    text = "| decoding, ms per sentence at output length | " + " | ".join(map(str, lengths)) + " |\n"
    text += "|---|" + "---:|" * len(lengths) + "\n"
    for key, points in growth["decode"].items():
        text += f"| {key} | " + " | ".join(f"{s * 1000:.1f}" for _, s in points) + " |\n"
    text += "\n| training pairs | one epoch (Transformer) | per 1k pairs |\n|---:|---:|---:|\n"
    for share in sorted(growth["train"], key=float):
        g = growth["train"][share]
        text += f"| {g['pairs']:,} | {g['seconds']:.1f} s | {g['seconds'] / g['pairs'] * 1000:.2f} s |\n"
    return text


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=60, help="timed training updates per model (default 60)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed updates first (default 10)")
    ap.add_argument("--batch1", type=int, default=100, help="sentences decoded at batch size 1 (default 100)")
    ap.add_argument("--sentences", type=int, default=None, help="decode only the first N test sentences")
    ap.add_argument("--no-joeynmt", action="store_true", help="skip JoeyNMT (no venv set-up)")
    ap.add_argument("--no-growth", action="store_true", help="skip the cost-growth measurements")
    ap.add_argument("--families", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                    help="our training precisions to time (default both); the first one's model is the one decoded")
    ap.add_argument("--work", type=Path, default=joey.CACHE / "speed", help="scratch directory (outside the repo)")
    ap.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    ap.add_argument("--decode-model", type=Path, default=REPO / "runs" / "multi30k-transformer",
                    help="a trained Transformer run decoded by all three engines (default: runs/multi30k-transformer, "
                         "if trained; else the bench's own short-trained models)")
    ap.add_argument("--record", action="store_true", help="append the tables to BENCHMARKS.md")
    args = ap.parse_args()

    if args.worker:  # child-process modes
        mode, *rest = args.worker
        if mode == "train":
            print(json.dumps(train_worker(rest[0], Path(rest[1]), int(rest[2]), int(rest[3]), rest[4])))
        elif mode == "growth":
            print(json.dumps(growth_worker(Path(rest[0]), [int(x) for x in rest[1:]])))
        return

    from seq2seqkit.data.tokenizers import load_tokenizers
    from seq2seqkit.evaluate import load_eval_set

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"matmul peak: fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s "
          f"({torch.get_num_threads()} threads)", file=sys.stderr)

    ours: dict = {}  # (family, precision) -> measurements; the fp32 run's model is the one decoded below
    for family in args.families:
        for precision in args.precisions:
            print(f"training ours: {family} ({precision})", file=sys.stderr)
            out = work / "ours" / (family if precision == args.precisions[0] else f"{family}-{precision}")
            ours[(family, precision)] = in_child("train", family, str(out), str(args.warmup), str(args.steps), precision)
    src_tok, _ = load_tokenizers(work / "ours" / args.families[0])
    sources = load_eval_set(DATA / "test_2016_flickr.de.gz", DATA / "test_2016_flickr.en.gz").sources[:args.sentences]

    theirs: dict = {}
    decoded: dict = {}
    joey_cfgs: dict = {}
    if not args.no_joeynmt:
        joey.ensure_venv()
        data = joey.write_data(DATA, work)
        spm = work / "ours" / args.families[0] / "src.spm.model"
        vocab = joey.write_vocab([src_tok.id_to_piece(i) for i in range(src_tok.vocab_size)], work / "joey-vocab.txt")
        for family in args.families:
            print(f"training JoeyNMT: {family}", file=sys.stderr)
            model_dir = work / "joeynmt" / family
            joey.clean(model_dir)
            cfg = joey.joey_config(family, data, spm, vocab, model_dir, args.warmup + args.steps, log_every=args.warmup)
            cfg_file = work / f"joeynmt-{family}.yaml"
            windows, rss_kib, log = joey.train(cfg, cfg_file, work / f"joeynmt-{family}.time")
            timed = [rate for step, rate in windows if step > args.warmup]
            params = joey.PARAMS_LOG.search(log)
            theirs[family] = {"tokens_per_s": sum(timed) / len(timed), "peak_rss_mib": rss_kib / 1024,
                              "params": int(params.group(1)) if params else None}
            joey_cfgs[family] = cfg_file

    trained = args.decode_model if args.decode_model and (args.decode_model / "checkpoints" / "best.pt").exists() else None
    for family in args.families:
        print(f"decoding: {family}", file=sys.stderr)
        for engine, res in decode_family(family, work, sources, args.batch1, trained, joey_cfgs.get(family)).items():
            decoded[(family, engine)] = res
    how = (f"the Transformer rows decode the trained model `{trained.relative_to(REPO) if trained.is_relative_to(REPO) else trained}` "
           "(best checkpoint; JoeyNMT runs the same weights, imported), the attention GRU rows each toolkit's model "
           "from the training above (same updates)" if trained else "each toolkit decodes its models from the training above (same updates)")
    text = (f"fp32 matmul peak {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s (2048³, same run).  \n"
            f"Training: {args.warmup} untimed + {args.steps} timed updates of 4096-token batches per model, from "
            f"scratch, each toolkit in its own process.\n\n" + training_table(ours, theirs, {"fp32": peak32, "bf16": peak16})
            + f"\nDecoding test_2016_flickr (greedy / beam 5, length penalty 1, outputs ≤ 60 tokens): "
              f"{how}; \"same\" = share of outputs identical to ours:\n\n" + decoding_table(decoded, src_tok, args.batch1, len(sources)))
    if not args.no_growth:
        lengths = ["8", "16", "32", "64", "128"]
        growth = in_child("growth", str(work / "ours"), *lengths)
        growth["train"] = {float(k): v for k, v in growth["train"].items()}
        plot_growth(growth, args.plot)
        text += f"\nCost growth (plot: `{args.plot.relative_to(REPO) if args.plot.is_relative_to(REPO) else args.plot}`):\n\n" + growth_table(growth)
    print(text)
    if args.record:
        record("Speed: seq2seq-kit vs JoeyNMT 2.3.0 and CTranslate2", text)
    print(f"machine: {machine()}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
