"""On a GPU: the first-call cost of the Transformer's masked attention over many input shapes,
with PyTorch's default SDPA backends and with cuDNN's left out (what ``models/transformer.py``
runs on a GPU). Sequence-to-sequence batches bring a new (batch, length) shape at nearly every
step; a backend that builds a plan per shape pays for it at each one.

    python bench/sdpa_shapes.py             # 40 random shapes per setting, each run twice

Prints, per setting, the seconds of the first calls (forward and backward under bf16
autocast) and of the repeats.
"""

from __future__ import annotations

import argparse
import random
import time

from common import REPO  # noqa: F401  (puts the repository on the path)

import torch  # noqa: E402

from seq2seqkit.models import transformer as T  # noqa: E402


def run(shapes: list[tuple[int, int]], dim: int, heads: int) -> tuple[float, float]:
    torch.manual_seed(0)
    m = T.MultiHeadAttention(dim, heads, 0.1).cuda().train()
    first = again = 0.0
    for batch, length in shapes:
        x = torch.randn(batch, length, dim, device="cuda")
        mask = torch.ones(batch, length, dtype=torch.bool, device="cuda")
        mask[0, length // 2:] = False  # padding, as in a real batch
        for rep in range(2):
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                k, v = m.keys_values(x)
                y = m(x, k, v, mask)
            y.float().sum().backward()
            torch.cuda.synchronize()
            if rep == 0:
                first += time.perf_counter() - t
            else:
                again += time.perf_counter() - t
    return first, again


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=int, default=40)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/sdpa_shapes.py: no CUDA GPU visible to PyTorch")
    rng = random.Random(0)
    for label, backends in (("PyTorch's default backends", None), ("cuDNN left out (seq2seq-kit)", T.GPU_SDPA)):
        shapes = [(rng.randint(16, 220), rng.randint(5, 45)) for _ in range(args.shapes)]
        saved = T.GPU_SDPA
        B = torch.nn.attention.SDPBackend
        T.GPU_SDPA = backends or [B.CUDNN_ATTENTION, B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH]
        try:
            first, again = run(shapes, args.dim, args.heads)
        finally:
            T.GPU_SDPA = saved
        print(f"{label}: {len(shapes)} new shapes, first calls {first:.2f} s, repeats {again:.3f} s", flush=True)


if __name__ == "__main__":
    main()
