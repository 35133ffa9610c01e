"""Where decoding time goes: time and profile a trained model translating Multi30k test sentences.

    python bench/profile_decode.py runs/multi30k-transformer               # greedy and beam 5, batch 64
    python bench/profile_decode.py runs/multi30k-attention --sentences 128 --threads 1

Times ``Translator.translate`` (tokenization to detokenized text, as users run it) on the first
``--sentences`` sentences of test_2016_flickr, wall clock and process CPU time (the latter is
less disturbed by other jobs on the machine), then prints the top operators of one profiled
pass. Search settings: length penalty 1, outputs up to 60 tokens, as in ``bench/speed.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import REPO, machine  # first: s2s's process settings, before torch loads

import torch
from torch.profiler import profile

from seq2seqkit.evaluate import load_eval_set
from seq2seqkit.translate import Translator

DATA = REPO.parent / "shared" / "data" / "multi30k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--rows", type=int, default=15, help="operators in each profile table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sources = load_eval_set(DATA / "test_2016_flickr.de.gz", DATA / "test_2016_flickr.en.gz").sources[: args.sentences]
    tr = Translator.load(args.model_dir, args.checkpoint)
    print(f"{args.model_dir} ({args.checkpoint}), {len(sources)} sentences, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads; {machine()}")
    for beam in args.beams:
        tr.cfg.search = tr.cfg.search.model_copy(update={
            "beam_size": beam, "batch_size": args.batch_size, "length_penalty": 1.0, "max_len_a": 0.0, "max_len_b": 60})
        tr.translate(sources[: args.batch_size])  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        tr.translate(sources)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"beam {beam}: {wall:.2f} s wall, {cpu:.2f} s CPU, {len(sources) / wall:.1f} sentences/s")
        with profile() as prof:
            tr.translate(sources)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
