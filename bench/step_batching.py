"""Step-level batching in-process: how fast `search.PathDecoder` decodes when rows join and leave.

The same test sentences decoded greedily, ``--widths`` rows kept running (a finished row's place
is refilled before the next step, as `s2s serve --batching step` does under that many clients;
width 1 is one at a time); prints for each width sentences/s, decoding steps, milliseconds per
step, and how a step's time splits between admitting newcomers (encode + merge) and the step
itself (decode_step, choosing, removing finished rows), then (with ``--profile``) the cProfile of
the widest run.

It also prints the floor that this decoder puts under a server's latency at N clients that each
wait for their answer before sending again (the load of ``bench/serve.py``): by Little's law the
mean latency is N / throughput, so no server built on this decoder, whatever its HTTP and
queueing cost, can answer N such clients faster on average than N / (this in-process
throughput at width N).

    python bench/step_batching.py --model runs/multi30k-transformer --threads 1 --widths 1 8 32 --profile
    python bench/step_batching.py --model runs/multi30k-transformer --device cuda --widths 1 8 32 --profile

On a GPU the second profile (by own time) shows where the host spends a step: issuing kernels, or
waiting for the GPU (``tolist``).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from seq2seqkit.runtime import configure_process

configure_process()  # as `s2s serve` runs: before torch loads

import torch  # noqa: E402
from common import REPO  # noqa: E402,F401  (puts the repository on the path)

from seq2seqkit.data.dataset import pad_sources  # noqa: E402
from seq2seqkit.evaluate import load_eval_set  # noqa: E402
from seq2seqkit.search import PathDecoder, most_probable  # noqa: E402
from seq2seqkit.translate import Translator  # noqa: E402


def run(model, ids: list[list[int]], width: int) -> tuple[float, int, float]:
    """Seconds and steps to decode ``ids`` with ``width`` rows kept running, and the seconds of
    those spent admitting newcomers."""
    decoder, nxt, done, steps, admitting = PathDecoder(model, most_probable), 0, 0, 0, 0.0
    device = next(model.parameters()).device
    start = time.perf_counter()
    while done < len(ids):
        free = width - len(decoder)
        if free > 0 and nxt < len(ids):
            t = time.perf_counter()
            chunk = ids[nxt : nxt + free]
            src, lens = pad_sources(chunk)
            decoder.admit(src.to(device), lens.to(device), list(range(nxt, nxt + len(chunk))))
            nxt += len(chunk)
            admitting += time.perf_counter() - t
        done += len(decoder.step())
        steps += 1
    return time.perf_counter() - start, steps, admitting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, metavar="DIR")
    ap.add_argument("--sentences", type=int, default=640)
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 32], metavar="N",
                    help="rows kept running (1: one at a time)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where the model decodes (auto: a GPU where there is one)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--autocast-bf16", action="store_true",
                    help="decode under torch.autocast('cpu', dtype=torch.bfloat16) (tried for serving: no gain)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = Translator.load(args.model, device=args.device)
    test = t.cfg.data.test if t.cfg.data.test.is_set else t.cfg.data.dev
    sources = [s for s in load_eval_set(*test.files(), fmt=test.format).sources if s.strip()][: args.sentences]
    ids = [t.src_tok.encode(s) for s in sources]
    where = next(t.model.parameters()).device
    print(f"{len(ids)} sentences, greedy, on {where}, {args.threads} thread(s){', bf16 autocast' if args.autocast_bf16 else ''}\n")
    print("| rows | sentences/s | steps | ms per step | of which admitting | mean latency floor at N=rows clients |")
    print("|---:|---:|---:|---:|---:|---:|")
    lone = None
    for width in args.widths:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast_bf16):
            seconds, steps, admitting = run(t.model, ids, width)
        rate = len(ids) / seconds
        if width == 1:
            lone = 1000 / rate  # one at a time: the mean time a sentence takes alone
        floor = f"{1000 * width / rate:.0f} ms" + (f" ({width / rate * 1000 / lone:.1f}x a lone sentence's mean)" if lone else "")
        print(f"| {width} | {rate:.1f} | {steps} | {1000 * seconds / steps:.2f} | {1000 * admitting / steps:.2f} | {floor} |")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run, t.model, ids, max(args.widths))
        pstats.Stats(prof).sort_stats("cumulative").print_stats("decode_step|encode|merge|_keep|admit")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)  # on a GPU: the host's own work, and where it waits


if __name__ == "__main__":
    main()
