"""What the generation controls cost: decoding time with each control on vs off.

A randomly initialised Transformer (an untrained model rarely says EOS, so every output runs to
the length cap: the controls' work per step is measured over full-length histories) decodes
random sources with greedy and beam search. Prints a table of the fastest wall time of each setting.

    python bench/generation_controls.py [--steps 100] [--batch 32] [--beam 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from common import machine  # first: s2s's process settings, before torch loads

import torch  # noqa: E402
from seq2seqkit.config import SearchConfig, model_config
from seq2seqkit.data.dataset import pad_sources
from seq2seqkit.models import build_model
from seq2seqkit.search import search

CONTROLS = {
    "off": {},
    "no_repeat_ngram_size 3": {"no_repeat_ngram_size": 3},
    "min_len 50": {"min_len": 50},
    "repetition_penalty 1.2": {"repetition_penalty": 1.2},
    "all three": {"no_repeat_ngram_size": 3, "min_len": 50, "repetition_penalty": 1.2},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="output length cap")
    ap.add_argument("--batch", type=int, default=32, help="sources per batch")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = model_config(family="transformer", embed_dim=256, heads=4, ff_dim=1024, encoder_layers=3, decoder_layers=3,
                       dropout=0.0)
    model = build_model(cfg, src_vocab=8000, tgt_vocab=8000).eval()
    src, lens = pad_sources(torch.randint(4, 8000, (args.batch, 40)).tolist())
    for beam in (1, args.beam):  # warm-up: the first calls pay for kernel set-up
        search(model, src, lens, SearchConfig(beam_size=beam, max_len_a=0.0, max_len_b=args.steps))
    print(f"machine: {machine()}")
    print(f"Transformer d=256 3+3 layers, V=8000, {args.batch} sources of 40 tokens, {args.steps} steps; "
          f"fastest of {args.repeats} runs (the least disturbed by other load)")
    print(f"| controls | greedy s | beam {args.beam} s |")
    print("|---|---|---|")
    for name, controls in CONTROLS.items():
        row = []
        for beam in (1, args.beam):
            sc = SearchConfig(beam_size=beam, max_len_a=0.0, max_len_b=args.steps, length_penalty=0.0, **controls)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                search(model, src, lens, sc)
                times.append(time.perf_counter() - start)
            row.append(f"{min(times):.2f}")
        print(f"| {name} | {' | '.join(row)} |")


if __name__ == "__main__":
    main()
