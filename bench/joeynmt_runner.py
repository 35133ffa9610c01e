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
from typing import Any

CACHE = Path(os.environ.get("S2S_CACHE_DIR", Path.home() / ".cache" / "seq2seqkit")) / "bench"
VENV = CACHE / "joeynmt-2.3.0-venv"
PY = VENV / "bin" / "python"
PACKAGES = [["torch==2.13.0"], ["joeynmt==2.3.0", "sentencepiece==0.1.99", "importlib_metadata"]]
JOEY_POSITIONS = 5000  # rows of JoeyNMT's PositionalEncoding buffer
PARAMS_LOG = re.compile(r"Total params: (\d+)")
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
        # A constant lr over the benchmark's updates, as ours has (its plateau schedule only acts
        # after validations, and none run here). JoeyNMT 2.3.0 refuses a config without a
        # scheduler and its "plateau" passes `verbose` that torch 2.13 no longer accepts, so:
        # StepLR stepping once per 1000 epochs.
        training = {"optimizer": "adam", "learning_rate": 0.001, "label_smoothing": 0.1,
                    "scheduling": "decaying", "decaying_step_size": 1000}
    training.update({
        "random_seed": 1234, "normalization": "tokens", "batch_size": batch_tokens, "batch_type": "token",
        "epochs": 1000, "updates": updates,  # JoeyNMT 2.3.0 reads max_updates from `updates`
        "logging_freq": log_every,
        "validation_freq": log_every * (updates // log_every + 1),  # never reached; JoeyNMT wants a multiple
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
    torch.set_num_threads(job["threads"])
    model, data, args = _from_pretrained(job["model_dir"], cfg_file=job["config"])
    hub = TranslatorHubInterface(model, data, args)
    if job["layer_norm_eps"] is not None:  # imported weights: the epsilon they were trained with
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = job["layer_norm_eps"]
    out = {}
    for name, beam, bs in job["runs"]:
        hub.translate(job["sources"][:bs], beam_size=beam, beam_alpha=1.0)  # warm-up
        hyps, t0 = [], time.perf_counter()
        for i in range(0, len(job["sources"]), bs):
            hyps += hub.translate(job["sources"][i:i + bs], beam_size=beam, beam_alpha=1.0)
        out[name] = {"seconds": time.perf_counter() - t0, "hyps": hyps}
    print("@@RESULT@@" + json.dumps(out))
""")


# ----------------------------------------------------------------------------- our weights in JoeyNMT
def transformer_state(model: Any) -> dict:
    """Our trained ``TransformerSeq2Seq`` (pre-norm, sinusoidal, shared and tied embeddings)
    as a JoeyNMT 2.3.0 state dict, rows still in our vocabulary order.

    The two implementations compute the same function: q/k/v/out projections with biases,
    ReLU feed-forward, pre-norm residuals with a final LayerNorm per stack, embeddings times
    sqrt(d) plus a position table, an output projection without bias. Only the position table
    differs in layout (ours: [sin | cos] halves, JoeyNMT: interleaved), so ours is written
    into JoeyNMT's ``pe`` buffer. This lets the benchmark time both toolkits' decoding on the
    same trained weights, where the outputs (and so the work done) agree."""
    import torch

    enc, dec = model.encoder, model.decoder
    if enc.embed.positions.kind != "sinusoidal" or not model.encoder.layers[0].pre:
        raise ValueError("the JoeyNMT import handles the pre-norm, sinusoidal Transformer only")
    sd: dict = {}

    def lin(name: str, layer: Any) -> None:
        sd[f"{name}.weight"] = layer.weight.detach().clone()
        if layer.bias is not None:
            sd[f"{name}.bias"] = layer.bias.detach().clone()

    def attention(name: str, attn: Any) -> None:
        for ours, theirs in (("q_proj", "q_layer"), ("k_proj", "k_layer"), ("v_proj", "v_layer"), ("out_proj", "output_layer")):
            lin(f"{name}.{theirs}", getattr(attn, ours))

    def feed_forward(name: str, ff: Any, norm: Any) -> None:
        lin(f"{name}.layer_norm", norm)
        lin(f"{name}.pwff_layer.0", ff[0])
        lin(f"{name}.pwff_layer.3", ff[2])

    for side, stack in (("src", enc), ("trg", dec)):
        sd[f"{side}_embed.lut.weight"] = stack.embed.table.weight.detach().clone()
    with torch.no_grad():
        table = enc.embed.positions(torch.arange(JOEY_POSITIONS)).unsqueeze(0)
    for i, layer in enumerate(enc.layers):
        lin(f"encoder.layers.{i}.layer_norm", layer.norm1)
        attention(f"encoder.layers.{i}.src_src_att", layer.attn)
        feed_forward(f"encoder.layers.{i}.feed_forward", layer.ff, layer.norm2)
    for i, layer in enumerate(dec.layers):
        lin(f"decoder.layers.{i}.x_layer_norm", layer.norm1)
        attention(f"decoder.layers.{i}.trg_trg_att", layer.self_attn)
        lin(f"decoder.layers.{i}.dec_layer_norm", layer.norm2)
        attention(f"decoder.layers.{i}.src_trg_att", layer.cross_attn)
        feed_forward(f"decoder.layers.{i}.feed_forward", layer.ff, layer.norm3)
    for name, stack in (("encoder", enc), ("decoder", dec)):
        sd[f"{name}.pe.pe"] = table.clone()
        lin(f"{name}.layer_norm", stack.norm)
    sd["decoder.output_layer.weight"] = model.output.weight.detach().clone()
    return sd


IMPORT = textwrap.dedent("""
    import json, sys
    import torch
    from joeynmt.config import load_config, parse_global_args
    from joeynmt.model import build_model
    from joeynmt.vocabulary import build_vocab
    job = json.loads(sys.stdin.read())
    args = parse_global_args(load_config(job["config"]), rank=0, mode="translate")
    src_vocab, trg_vocab = build_vocab(args.data)
    model = build_model(args.model, src_vocab=src_vocab, trg_vocab=trg_vocab)
    state = torch.load(job["weights"])
    ours = {piece: i for i, piece in enumerate(job["pieces"])}
    for key, vocab in (("src_embed.lut.weight", src_vocab), ("trg_embed.lut.weight", trg_vocab),
                       ("decoder.output_layer.weight", trg_vocab)):
        state[key] = state[key][[ours[piece] for piece in vocab._itos]]  # our ids -> JoeyNMT's
    model.load_state_dict(state, strict=True)
    torch.save({"model_state": model.state_dict(), "steps": 0}, job["out"])
""")


def import_transformer(model: Any, pieces: list[str], spm_model: Path, data: Path, model_dir: Path) -> Path:
    """Write our trained Transformer as a JoeyNMT model directory (config, vocabulary,
    ``imported.ckpt``) and return its config file, ready for :func:`decode`."""
    import torch
    import yaml

    clean(model_dir)
    model_dir.mkdir(parents=True)
    vocab = write_vocab(pieces, model_dir / "vocab.txt")
    cfg = joey_config("transformer", data, spm_model, vocab, model_dir, updates=1, log_every=1)
    cfg_file = model_dir / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    torch.save(transformer_state(model), model_dir / "ours.pt")
    job = {"config": str(cfg_file), "weights": str(model_dir / "ours.pt"), "pieces": pieces,
           "out": str(model_dir / "imported.ckpt")}
    proc = subprocess.run([str(PY), "-c", IMPORT], input=json.dumps(job), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"JoeyNMT import failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return cfg_file


def decode(model_dir: Path, config_file: Path, sources: list[str], runs: list[tuple[str, int, int]],
           threads: int, layer_norm_eps: float | None = None) -> dict:
    """Time JoeyNMT's own translation entry point on ``sources`` for each (name, beam, batch)."""
    ckpts = sorted(model_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise RuntimeError(f"{model_dir}: JoeyNMT saved no checkpoint")
    cfg_file = model_dir / "speed-decode.yaml"
    import yaml

    cfg = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    cfg["testing"]["load_model"] = str(ckpts[-1])
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    job = {"model_dir": str(model_dir), "config": str(cfg_file), "sources": sources, "runs": runs, "threads": threads,
           "layer_norm_eps": layer_norm_eps}
    proc = subprocess.run([str(PY), "-c", DECODE], input=json.dumps(job), capture_output=True, text=True)
    marker = proc.stdout.rfind("@@RESULT@@")
    if proc.returncode != 0 or marker < 0:
        raise RuntimeError(f"JoeyNMT decoding failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(proc.stdout[marker + len("@@RESULT@@"):])


def clean(model_dir: Path) -> None:
    shutil.rmtree(model_dir, ignore_errors=True)
