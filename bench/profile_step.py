"""Where a training step's time goes: time and profile one model's update on a Multi30k-sized batch.

    python bench/profile_step.py transformer              # ms per update, tokens/s, top operators
    python bench/profile_step.py attention --bf16         # ... with the forward pass in bfloat16
    python bench/profile_step.py transformer --glibc-default-malloc   # without keep_freed_memory()

The batch is synthetic but shaped like the real ones (230 sentences of 17 source and 18 target
subwords, about 4096 tokens; random ids from an 8k vocabulary), so the numbers isolate the
model's update from data loading. The model is the one in ``configs/multi30k-FAMILY.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

from common import REPO, machine  # first: s2s's process settings, before torch loads

import torch
from torch.profiler import profile

from seq2seqkit.config import load_config
from seq2seqkit.models import build_model
from seq2seqkit.runtime import keep_freed_memory
from seq2seqkit.training import token_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=["rnn", "attention", "transformer"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--bf16", action="store_true", help="forward pass under torch.autocast(bfloat16)")
    ap.add_argument("--glibc-default-malloc", action="store_true", help="skip keep_freed_memory()")
    ap.add_argument("--steps", type=int, default=8, help="timed updates (default 8, after 2 untimed)")
    ap.add_argument("--rows", type=int, default=25, help="operators in the profile table")
    args = ap.parse_args()
    if not args.glibc_default_malloc:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(REPO / f"configs/multi30k-{args.family}.yaml")
    model = build_model(cfg.model, 8000, 8000).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b, s, t = 230, 17, 18
    src, tgt = torch.randint(4, 8000, (b, s)), torch.randint(4, 8000, (b, t))
    lens = torch.full((b,), s)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext():
            logits = model(src, lens, tgt)
        loss = token_loss(logits, tgt, 0.1)
        opt.zero_grad(set_to_none=True)
        (loss / (b * t)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    ms = (time.perf_counter() - start) / args.steps * 1000
    print(f"{args.family}{' bf16' if args.bf16 else ''}: {ms:.0f} ms per update, {b * t / ms * 1000:.0f} target tokens/s "
          f"({model.num_parameters():,} parameters; {machine()})")
    with profile() as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
