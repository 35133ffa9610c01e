"""Cost of the pointer-generator mixture (models/copy.py) at SAMSum training shapes.

    python bench/copy_mixture.py                      # B=40 summaries x T=100 pieces, S=512, V=8000
    python bench/copy_mixture.py --batch 16 --vocab 16000

``copy_log_probs`` computes the copy part at the S source positions and writes it over the
vocabulary part; ``dense`` is the textbook formula, which scatters the attention into a (B, T, V)
copy distribution first (log of ``p_gen * P_vocab + (1 - p_gen) * copy``, mixed in log space).
Each row is a fresh process (peak RSS is per process) at one thread: CPU seconds per forward and
backward pass of the mixture alone, the mean of ``--repeats``, and the growth of peak RSS over
the inputs. Both give the same values and gradients (tests/test_copy.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def dense(logits: torch.Tensor, gate: torch.Tensor, attention: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    ids = src.unsqueeze(1).expand_as(attention)
    copy = torch.zeros_like(logits).scatter_add(-1, ids, attention)
    present = copy > 0
    log_copy = torch.where(present, torch.where(present, copy, 1.0).log(), -torch.inf)
    return torch.logaddexp(F.logsigmoid(gate).unsqueeze(-1) + F.log_softmax(logits, -1),
                           F.logsigmoid(-gate).unsqueeze(-1) + log_copy)


def measure(kind: str, b: int, t: int, s: int, v: int, repeats: int) -> dict[str, float]:
    from seq2seqkit.models.copy import copy_log_probs

    torch.set_num_threads(1)
    fn = copy_log_probs if kind == "copy_log_probs" else dense
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(b, t, v, generator=gen, requires_grad=True)
    gate = torch.randn(b, t, generator=gen, requires_grad=True)
    attention = torch.randn(b, t, s, generator=gen).softmax(-1).requires_grad_()
    src = torch.randint(5, v, (b, s), generator=gen)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()
    for _ in range(repeats):
        fn(logits, gate, attention, src).sum().backward()
    return {"cpu_s": (time.process_time() - start) / repeats,
            "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100, help="target positions per summary (T)")
    ap.add_argument("--source", type=int, default=512, help="source positions (S)")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run one measurement in this process
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.batch, a.steps, a.source, a.vocab, a.repeats)))
        return
    print(f"B={a.batch} T={a.steps} S={a.source} V={a.vocab}, 1 thread, mean of {a.repeats}\n")
    print(f"{'mixture':<16} {'CPU s fwd+bwd':>14} {'peak RSS +MB':>13}")
    for kind in ("copy_log_probs", "dense"):
        args = [sys.executable, __file__, "--one", kind, *sys.argv[1:]]
        r = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
        print(f"{kind:<16} {r['cpu_s']:>14.2f} {r['rss_mb']:>13.0f}")


if __name__ == "__main__":
    main()
