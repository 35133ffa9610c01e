"""JoeyNMT 2.3.0 as a peer in the speed benchmark: its own virtual environment, our data and
vocabulary in its formats, its training run for a fixed number of updates, its decoding timed.

Nothing of JoeyNMT is imported into this process: it runs in its own venv (created on first use
under ``~/.cache/seq2seqkit/bench/``, outside the repository) through subprocesses, so its
dependency pins never touch ours. What it needs, found by trying: ``torch==2.13.0`` installed
first (the pin this machine has a CPU build of), then ``joeynmt==2.3.0`` with
``sentencepiece==0.1.99`` and ``importlib_metadata``.

Both toolkits get the same data (Multi30k de->en train, decompressed into the work directory),
the same joint 8k SentencePiece model (ours, trained by our tokenizer code; JoeyNMT reads the
``.model`` file and a vocabulary file listing its pieces), the same batch size in tokens (4096;
JoeyNMT counts longest sentence x sentences with padding, as ours does, but does not bucket by
length) and the same architecture sizes.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

CACHE = Path(os.environ.get("S2S_CACHE_DIR", Path.home() / ".cache" / "seq2seqkit")) / "bench"
VENV = CACHE / "joeynmt-2.3.0-venv"
PY = VENV / "bin" / "python"
PACKAGES = [["torch==2.13.0"], ["joeynmt==2.3.0", "sentencepiece==0.1.99", "importlib_metadata"]]
STEP_LOG = re.compile(r"Epoch\s+\d+, Step:\s+(\d+), .*Tokens per Sec:\s+(\d+)")


def ensure_venv() -> Path:
    """The JoeyNMT interpreter, installing the venv the first time (a few minutes)."""
    if PY.exists() and subprocess.run([str(PY), "-c", "import joeynmt"], capture_output=True).returncode == 0:
        return PY
    print(f"setting up JoeyNMT 2.3.0 in {VENV} (first run only)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    for group in PACKAGES:  # torch first, pinned, so joeynmt's "torch>=1.12" is already met
        subprocess.run([str(PY), "-m", "pip", "install", "-q", *group], check=True)
    return PY


def write_data(src_dir: Path, work: Path, splits: tuple[str, ...] = ("train", "val", "test_2016_flickr")) -> Path:
    """Multi30k ``SPLIT.{de,en}.gz`` -> plain ``work/data/SPLIT.{de,en}`` (JoeyNMT's "plain"
    dataset reads PREFIX.LANG). Written outside the repository; reused when present."""
    out = work / "data"
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        for lang in ("de", "en"):
            target = out / f"{split}.{lang}"
            if not target.exists():
                with gzip.open(src_dir / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                    tmp = target.with_suffix(target.suffix + ".tmp")
                    tmp.write_text(f.read(), encoding="utf-8")
                    tmp.rename(target)
    return out


def write_vocab(pieces: list[str], path: Path) -> Path:
    """One piece per line in id order; JoeyNMT puts its own specials first and skips repeats."""
    path.write_text("".join(p + "\n" for p in pieces), encoding="utf-8")
    return path


def joey_config(family: str, data: Path, spm_model: Path, vocab: Path, model_dir: Path, updates: int,
                log_every: int, batch_tokens: int = 4096) -> dict:
    """A JoeyNMT config for model (a) transformer or (b) attention GRU, sized as ours."""
    side = lambda lang: {  # noqa: E731
        "lang": lang, "level": "bpe", "lowercase": False, "max_length": 100, "voc_file": str(vocab),
        "tokenizer_type": "sentencepiece", "tokenizer_cfg": {"model_file": str(spm_model)},
    }
    if family == "transformer":
        enc_dec = {"type": "transformer", "num_layers": 3, "num_heads": 4, "hidden_size": 256, "ff_size": 1024,
                   "dropout": 0.3, "layer_norm": "pre", "embeddings": {"embedding_dim": 256, "scale": True}}
        model = {"initializer": "xavier_uniform", "embed_initializer": "xavier_uniform", "bias_initializer": "zeros",
                 "tied_embeddings": True, "tied_softmax": True, "encoder": enc_dec, "decoder": dict(enc_dec)}
        training = {"optimizer": "adam", "adam_betas": [0.9, 0.98], "learning_rate": 0.0007,
                    "scheduling": "warmupinversesquareroot", "learning_rate_warmup": 800, "label_smoothing": 0.1}
    else:
        model = {
            "encoder": {"type": "recurrent", "rnn_type": "gru", "hidden_size": 512, "bidirectional": True,
                        "num_layers": 1, "dropout": 0.3, "embeddings": {"embedding_dim": 256}},
            "decoder": {"type": "recurrent", "rnn_type": "gru", "hidden_size": 512, "num_layers": 1, "dropout": 0.3,
                        "hidden_dropout": 0.3, "attention": "bahdanau", "input_feeding": True,
                        "init_hidden": "bridge", "embeddings": {"embedding_dim": 256}},
        }
        training = {"optimizer": "adam", "learning_rate": 0.001, "label_smoothing": 0.1}
    training.update({
        "random_seed": 1234, "normalization": "tokens", "batch_size": batch_tokens, "batch_type": "token",
        "epochs": 1000, "updates": updates,  # JoeyNMT 2.3.0 reads max_updates from `updates`
        "logging_freq": log_every, "validation_freq": 10 * updates + 1,
        "learning_rate_min": 1e-9,  # JoeyNMT stops training when lr < this: warm-up starts near 0
        "clip_grad_norm": 1.0, "model_dir": str(model_dir), "overwrite": True, "shuffle": True, "use_cuda": False,
        "num_workers": 0, "keep_best_ckpts": 1, "eval_metrics": ["bleu"], "early_stopping_metric": "loss",
    })
    return {
        "name": f"speed-{family}",
        "data": {"train": str(data / "train"), "dev": str(data / "val"), "test": str(data / "test_2016_flickr"),
                 "dataset_type": "plain", "src": side("de"), "trg": side("en")},
        "training": training,
        "testing": {"beam_size": 1, "beam_alpha": 1.0, "batch_size": 64, "batch_type": "sentence",
                    "max_output_length": 60, "eval_metrics": ["bleu"]},
        "model": model,
    }


def train(config: dict, path: Path, time_file: Path) -> tuple[list[tuple[int, float]], int, str]:
    """Run ``python -m joeynmt train``; returns the logged (step, tokens/s) windows, the peak
    RSS in KiB (from /usr/bin/time) and the log text."""
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(time_file), str(PY), "-m", "joeynmt", "train", str(path), "--skip-test"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"JoeyNMT training failed ({path}):\n{log[-3000:]}")
    windows = [(int(m.group(1)), float(m.group(2))) for m in STEP_LOG.finditer(log)]
    return windows, int(time_file.read_text().split()[-1]), log


DECODE = textwrap.dedent("""
    import json, sys, time
    import torch
    from joeynmt.hub_interface import TranslatorHubInterface, _from_pretrained
    job = json.loads(sys.stdin.read())
    torch.set_num_threads(job["threads"]) if job["threads"] else None
    model, data, args = _from_pretrained(job["model_dir"], cfg_file=job["config"])
    hub = TranslatorHubInterface(model, data, args)
    out = {}
    for name, beam, bs in job["runs"]:
        hub.translate(job["sources"][:bs], beam_size=beam, beam_alpha=1.0)  # warm-up
        hyps, t0 = [], time.perf_counter()
        for i in range(0, len(job["sources"]), bs):
            hyps += hub.translate(job["sources"][i:i + bs], beam_size=beam, beam_alpha=1.0)
        out[name] = {"seconds": time.perf_counter() - t0, "hyps": hyps}
    print("@@RESULT@@" + json.dumps(out))
""")


def decode(model_dir: Path, config_file: Path, sources: list[str], runs: list[tuple[str, int, int]],
           threads: int = 0) -> dict:
    """Time JoeyNMT's own translation entry point on ``sources`` for each (name, beam, batch)."""
    ckpts = sorted(model_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise RuntimeError(f"{model_dir}: JoeyNMT saved no checkpoint")
    cfg_file = model_dir / "speed-decode.yaml"
    import yaml

    cfg = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    cfg["testing"]["load_model"] = str(ckpts[-1])
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    job = {"model_dir": str(model_dir), "config": str(cfg_file), "sources": sources, "runs": runs, "threads": threads}
    proc = subprocess.run([str(PY), "-c", DECODE], input=json.dumps(job), capture_output=True, text=True)
    marker = proc.stdout.rfind("@@RESULT@@")
    if proc.returncode != 0 or marker < 0:
        raise RuntimeError(f"JoeyNMT decoding failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(proc.stdout[marker + len("@@RESULT@@"):])


def clean(model_dir: Path) -> None:
    shutil.rmtree(model_dir, ignore_errors=True)
