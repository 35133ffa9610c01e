"""Step-level batching in-process: how fast `search.PathDecoder` decodes when rows join and leave.

The same test sentences decoded greedily, ``--width`` rows kept running (a finished row's place is
refilled before the next step, as `s2s serve --batching step` does under that many clients) and
one at a time; prints sentences/s, decoding steps and milliseconds per step of each, then (with
``--profile``) the cProfile of the full-width run: where a step's time goes (decoding,
admitting newcomers: encode + merge, removing finished rows: select).

    python bench/step_batching.py --model runs/multi30k-transformer --threads 1 --profile
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


def run(model, ids: list[list[int]], width: int) -> tuple[float, int]:
    """Seconds and steps to decode ``ids`` with ``width`` rows kept running."""
    decoder, nxt, done, steps = PathDecoder(model, most_probable), 0, 0, 0
    start = time.perf_counter()
    while done < len(ids):
        free = width - len(decoder)
        if free > 0 and nxt < len(ids):
            chunk = ids[nxt : nxt + free]
            src, lens = pad_sources(chunk)
            decoder.admit(src, lens, list(range(nxt, nxt + len(chunk))))
            nxt += len(chunk)
        done += len(decoder.step())
        steps += 1
    return time.perf_counter() - start, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, metavar="DIR")
    ap.add_argument("--sentences", type=int, default=640)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = Translator.load(args.model)
    test = t.cfg.data.test if t.cfg.data.test.is_set else t.cfg.data.dev
    sources = [s for s in load_eval_set(*test.files(), fmt=test.format).sources if s.strip()][: args.sentences]
    ids = [t.src_tok.encode(s) for s in sources]
    for width in (1, args.width):
        seconds, steps = run(t.model, ids, width)
        print(f"width {width}: {len(ids) / seconds:.1f} sentences/s, {steps} steps, {1000 * seconds / steps:.2f} ms/step")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run, t.model, ids, args.width)
        pstats.Stats(prof).sort_stats("cumulative").print_stats("decode_step|encode|merge|_keep|admit")


if __name__ == "__main__":
    main()
