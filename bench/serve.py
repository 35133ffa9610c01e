"""Serving under load: `s2s serve` with batching across requests vs one request at a time.

The model: the Multi30k Transformer (``runs/multi30k-transformer``) where that run exists, else
the G2P Transformer (``runs/g2p-transformer``), else the quick G2P model of ``s2s demo``
(``runs/g2p-quick``, trained here if missing); ``--model DIR`` picks another. It is served on
loopback by ``s2s serve`` (uvicorn, a subprocess), once per ``--batching`` mode: by default
``step`` (step-level batching, the server's default) and ``off`` (each request decoded alone,
one at a time: OpenNMT-py's design); ``--batching step request off`` adds request-level
batching (a batch decodes to its end). At each number of concurrent clients (1, 8, 32, 128)
the same ``--sentences`` real test sentences are sent, one per request, split evenly among the
clients; each client sends its share one after another (httpx, async) and honours a 429's
Retry-After before its next request. So the 1-client row is every one of those sentences
decoded alone, and every row's percentiles are over the same inputs. Reported per row: throughput (sentences answered per
second of wall time), latency p50/p95/p99 of the answered requests, 429s (load shed) and other
errors (timeouts included). Targets (issue 15): at 32 clients, throughput >= 5x the
one-at-a-time server's, p95 <= 3x a lone request's, no errors; at 128, load shed with 429s
rather than timeouts. "A lone request's" latency is read two ways, both printed: the 1-client
p95 over the same sentences (like against like: long outputs take longer alone too) and the
stricter 1-client p50.

    python bench/serve.py                       # prints the table, writes bench/serve-latency.png
    python bench/serve.py --record              # also appends it to BENCHMARKS.md
    python bench/serve.py --clients 1 4 --sentences 12   # a quick check that it runs
    python bench/serve.py --server-log work/server.log --serve-args --device cuda   # on a GPU, keeping
                                                # each server's per-request log (queue_ms, decode_ms)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import REPO, ensure_trained, machine, record

from seq2seqkit.config import load_config, load_saved_config
from seq2seqkit.evaluate import load_eval_set

CANDIDATES = ["runs/multi30k-transformer", "runs/g2p-transformer"]
QUICK = "configs/g2p-quick.yaml"
DEFAULT_PLOT = REPO / "bench" / "serve-latency.png"


def pick_model(given: str | None) -> Path:
    """The model directory to serve: the one given, the first candidate run with a checkpoint,
    or the quick G2P model (trained now if missing)."""
    if given:
        return Path(given)
    for run in CANDIDATES:
        if (Path(run) / "checkpoints" / "last.pt").exists():
            return Path(run)
    cfg = load_config(QUICK)
    ensure_trained(cfg)
    return Path(cfg.output_dir)


def test_sentences(model_dir: Path, n: int) -> list[str]:
    cfg = load_saved_config(model_dir / "config.yaml")
    test = cfg.data.test if cfg.data.test.is_set else cfg.data.dev
    sources = load_eval_set(*test.files(), fmt=test.format).sources or []
    return [s for s in sources if s.strip()][:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``s2s serve`` in a subprocess, until SIGTERM."""

    def __init__(self, model_dir: Path, extra: list[str], log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        quiet = [] if log else ["-q"]  # with a log file, its one line per request goes there
        cmd = [sys.executable, "-m", "seq2seqkit.cli", *quiet, "serve", "-m", str(model_dir), "--port", str(self.port), *extra]
        self.log = log
        if log:
            with open(log, "w") as err:  # the server holds its own copy of the descriptor
                self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        else:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = self.proc.stderr.read() if self.proc.stderr else f"see {self.log}"
                raise SystemExit(f"s2s serve exited: {said}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("s2s serve did not get ready in 300 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load(url: str, sentences: list[str], clients: int) -> dict:
    """``clients`` clients sending every sentence once, one per request: client c sends the
    c-th, (c + clients)-th, ... sentence, each after the previous one's answer."""
    latencies: list[float] = []
    shed = errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal shed, errors
        for text in sentences[c::clients]:
            start = time.perf_counter()
            try:
                resp = await http.post(f"{url}/v1/generate", json={"inputs": [text]})
            except httpx.HTTPError:
                errors += 1
                continue
            if resp.status_code == 200:
                latencies.append(time.perf_counter() - start)
            elif resp.status_code == 429:
                shed += 1
                await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
            else:
                errors += 1

    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - start
    qs = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"clients": clients, "sent": len(sentences), "answered": len(latencies), "seconds": wall,
            "throughput": len(latencies) / wall, "p50": qs[49] if qs else float("nan"),
            "p95": qs[94] if qs else float("nan"), "p99": qs[98] if qs else float("nan"), "shed": shed, "errors": errors}


MODES = {"step": "step-level batching", "request": "request-level batching", "off": "one at a time"}


def run_mode(model_dir: Path, sentences: list[str], args: argparse.Namespace, batching: str) -> list[dict]:
    log = args.server_log.with_name(f"{args.server_log.stem}-{batching}{args.server_log.suffix}") if args.server_log else None
    with Server(model_dir, ["--batching", batching] + args.serve_args, log) as server:
        asyncio.run(load(server.url, sentences[:3], 1))  # warm-up
        rows = []
        for clients in args.clients:
            row = asyncio.run(load(server.url, sentences, clients))
            row["mode"] = MODES[batching]
            logging.info("%s, %d clients: %.1f sentences/s, p95 %.0f ms, %d shed, %d errors", row["mode"], clients,
                         row["throughput"], 1000 * row["p95"], row["shed"], row["errors"])
            rows.append(row)
    if log:
        read_server_log(log, rows)
    return rows


def read_server_log(path: Path, rows: list[dict]) -> None:
    """Add to each row (one concurrency, in order) the means of its answered requests' lines in the
    server's log (``--server-log``): queue and decode milliseconds, the rest of the request's time
    (HTTP, JSON, tokenizing), its decoding steps, the inputs of its first step, decode ms per step.
    The first 3 answered requests are the warm-up."""
    lines = [json.loads(line.split(" ", 1)[1]) for line in path.read_text().splitlines()
             if '"/v1/generate"' in line and '"status": 200' in line]
    at = 3
    for row in rows:
        mine, at = lines[at : at + row["answered"]], at + row["answered"]
        if not mine:
            continue

        def mean(f) -> float:
            return statistics.fmean(f(r) for r in mine)

        row["log"] = {"total": mean(lambda r: r["total_ms"]), "queue": mean(lambda r: r["queue_ms"]),
                      "decode": mean(lambda r: r["decode_ms"]),
                      "rest": mean(lambda r: r["total_ms"] - r["queue_ms"] - r["decode_ms"]),
                      "steps": mean(lambda r: r["steps"]), "rows": mean(lambda r: r["batch_inputs"]),
                      # step-level batching only (the other modes log no steps)
                      "per_step": mean(lambda r: r["decode_ms"] / r["steps"]) if all(r["steps"] for r in mine) else None}


def log_table(rows: list[dict]) -> str:
    head = ("| server | clients | total ms | queue ms | decode ms | the rest (HTTP, JSON, tokenizing) ms | steps "
            "| rows in its first step | decode ms per step |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    text = head
    for r in rows:
        if g := r.get("log"):
            per_step = "–" if g["per_step"] is None else f"{g['per_step']:.2f}"
            text += (f"| {r['mode']} | {r['clients']} | {g['total']:.1f} | {g['queue']:.1f} | {g['decode']:.1f} "
                     f"| {g['rest']:.1f} | {g['steps']:.1f} | {g['rows']:.1f} | {per_step} |\n")
    return text


def table(rows: list[dict]) -> str:
    head = ("| server | clients | requests | answered | sentences/s | p50 ms | p95 ms | p99 ms | 429 | errors |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r['mode']} | {r['clients']} | {r['sent']} | {r['answered']} | {r['throughput']:.1f} | {1000 * r['p50']:.0f} "
        f"| {1000 * r['p95']:.0f} | {1000 * r['p99']:.0f} | {r['shed']} | {r['errors']} |\n" for r in rows)


def targets(rows: list[dict]) -> str:
    """The issue's targets, checked on this run for each batching mode (where it measured 1 and
    32 clients, and the one-at-a-time server at 32)."""
    by = {(r["mode"], r["clients"]): r for r in rows}
    lines = []
    a32 = by.get((MODES["off"], 32))
    for mode in (MODES["step"], MODES["request"]):
        b32, b1, b128 = by.get((mode, 32)), by.get((mode, 1)), by.get((mode, 128))
        if b32 and a32 and b1:
            ratio = b32["throughput"] / max(a32["throughput"], 1e-9)
            lines.append(f"- {mode}, 32 clients: throughput {ratio:.1f}x the one-at-a-time server's (target >= 5x): "
                         f"{'met' if ratio >= 5 else 'NOT met'}")
            for lone in ("p95", "p50"):
                rel = b32["p95"] / b1[lone]
                lines.append(f"- {mode}, 32 clients: p95 {rel:.1f}x a lone request's {lone} over the same sentences "
                             f"(target <= 3x): {'met' if rel <= 3 else 'NOT met'}")
            lines.append(f"- {mode}, 32 clients: {b32['errors']} errors, {b32['shed']} shed (target 0)")
        if b128:
            lines.append(f"- {mode}, 128 clients: {b128['shed']} requests shed with 429, "
                         f"{b128['errors']} errors or timeouts")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for mode, color in ((MODES["step"], "tab:blue"), (MODES["request"], "tab:green"), (MODES["off"], "tab:red")):
        rs = [r for r in rows if r["mode"] == mode and r["answered"]]
        xs = [r["clients"] for r in rs]
        ax.plot(xs, [1000 * r["p50"] for r in rs], "o-", color=color, label=f"{mode}: p50")
        ax.plot(xs, [1000 * r["p95"] for r in rs], "s--", color=color, label=f"{mode}: p95")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    clients = sorted({r["clients"] for r in rows})
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.minorticks_off()
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency of answered requests (ms)")
    ax.set_title("s2s serve: latency vs concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", metavar="DIR", help="the model directory to serve (default: see above)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128], help="default: 1 8 32 128")
    ap.add_argument("--batching", nargs="+", choices=list(MODES), default=["step", "off"],
                    help="the server's --batching modes to measure, in turn (default: step off)")
    ap.add_argument("--sentences", type=int, default=640,
                    help="test sentences sent at each concurrency, one per request (default: 640)")
    ap.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                    help="the rest goes to `s2s serve` (e.g. --serve-args --max-wait-ms 10)")
    ap.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"default: {DEFAULT_PLOT.relative_to(REPO)}")
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--server-log", type=Path, metavar="FILE",
                    help="keep each server's log, one JSON line per request (queue_ms, decode_ms, the batch it "
                         "joined), in FILE with the batching mode added to its name (FILE-step.log, ...)")
    args = ap.parse_args()
    if min(args.clients) < 1 or args.sentences < max(args.clients):
        ap.error("--clients must be at least 1 and --sentences at least the largest --clients")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    model_dir = pick_model(args.model)
    sentences = test_sentences(model_dir, args.sentences)
    logging.info("serving %s, %d test sentences, %s", model_dir, len(sentences), machine())
    rows = [row for mode in args.batching for row in run_mode(model_dir, sentences, args, mode)]
    plot(rows, args.plot)
    body = (f"Model: `{model_dir}`; at each concurrency the same {len(sentences)} test sentences, one per request, split "
            f"evenly among the clients, each client sending its share in turn "
            f"(the server's default limits and search; greedy unless the model's config says otherwise). "
            f"Plot: `{args.plot.name}`\n\n" + table(rows) + "\n" + targets(rows))
    if args.server_log:
        body += "\nFrom the servers' logs (means over each row's answered requests):\n\n" + log_table(rows)
    print(body)
    if args.record:
        record("Serving: batching across requests vs one at a time (bench/serve.py)", body)


if __name__ == "__main__":
    main()
