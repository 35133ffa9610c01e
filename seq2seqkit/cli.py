"""The ``s2s`` command line: train, preprocess, generate (alias translate), chat, evaluate, average, export, check-data, prepare, demo.

User errors (bad files, bad config keys, bad arguments) print one line on stderr and exit
with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, DataError, UserError
from .runtime import configure_process, run_under_jemalloc, usable_cores

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only when a command needs them
    from .config import Config
    from .evaluate import EvalSet
    from .search import Hypothesis
    from .translate import Translator

log = logging.getLogger("seq2seqkit")
CONFIG_DIR = Path(__file__).parent / "configs"


# ------------------------------------------------------------------------------ commands
def launch_train(args: argparse.Namespace, check_config: Callable[[], Config]) -> int:
    """``s2s train --nproc N ...``: the same command in N processes on this machine, started by
    torchrun's launcher (torch.distributed.run), once ``check_config`` has read the config (a bad
    one is one line here, not one per process)."""
    from .distributed import launch

    if "LOCAL_RANK" in os.environ:
        raise UserError("--nproc: this process was already started by torchrun; give the number of processes "
                        "to torchrun (--nproc-per-node) only")
    cfg = check_config()
    import torch

    from .translate import resolve_device

    if resolve_device(cfg.training.device).type == "cuda":
        if args.nproc > (gpus := torch.cuda.device_count()):
            raise UserError(f"--nproc {args.nproc}: training.device is cuda and this machine has {gpus} GPU"
                            f"{'s' * (gpus != 1)}; NCCL needs one GPU per process: --nproc {gpus} at most "
                            f"(or training.device=cpu)")
    elif args.nproc > (cores := usable_cores()):  # torchrun would start them all, each with the data and a model
        raise UserError(f"--nproc {args.nproc}: training on the CPU, and this process may use {cores} core"
                        f"{'s' * (cores != 1)}; each training process needs one of its own: --nproc {cores} "
                        f"at most")
    argv = ["-q"] * args.quiet + ["--debug"] * args.debug + ["train"]
    argv += (["--resume", args.resume] if args.resume else []) + ([args.config] if args.config else []) + args.overrides
    return launch(args.nproc, argv)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import Trainer, load_for_resume

    def read_config() -> Config:
        if args.resume:
            overrides = ([args.config] if args.config else []) + args.overrides  # `--resume DIR k=v ...`
            return load_for_resume(args.resume, overrides)
        if not args.config:
            raise UserError("train: give a CONFIG.yaml (or --resume MODEL_DIR)")
        return load_config(args.config, args.overrides)

    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc: must be at least 1, got {args.nproc}")
    if args.nproc and args.nproc > 1:
        return launch_train(args, read_config)
    cfg = read_config()
    from .distributed import leave, shutdown

    trainer = Trainer(cfg, resume=bool(args.resume))
    trainer.train()
    shutdown()  # under torchrun: leave the process group
    status = 143 if trainer.stopped == "SIGTERM" else 130 if trainer.stopped else 0
    if trainer.dist.is_main:  # under torchrun: rank 0 says how it ended
        if trainer.stopped:  # SIGINT/SIGTERM: checkpoint of the last finished update saved
            print(f"s2s: stopped at step {trainer.progress.step}; continue with: s2s train --resume {cfg.output_dir}",
                  file=sys.stderr)
        else:
            print(f"model directory: {cfg.output_dir}")
    if trainer.dist.enabled:
        leave(status)  # everything is written: skip the teardown where gloo's threads could abort
    return status


def cmd_cache(args: argparse.Namespace) -> int:
    """``s2s cache list`` / ``s2s cache clear``: the tokenized training splits that runs keep
    (``data.cache``) in ``$S2S_CACHE_DIR/shards`` (default ``~/.cache/seq2seqkit/shards``)."""
    from .data.shards import cache_entries, cache_root, remove_cache_entry

    if args.older_than is not None and not (math.isfinite(args.older_than) and args.older_than >= 0):
        raise UserError(f"--older-than: a number of days, at least 0, got {args.older_than:g}")  # -5 cleared all, nan none
    entries = cache_entries(check_sources=args.action == "list" or args.stale)
    if args.action == "list":
        print(f"{cache_root()}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
              f"{sum(e.size for e in entries) / 1e6:.1f} MB")
        for e in entries:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
            pairs = f"{e.pairs:,} pairs" if e.pairs is not None else "? pairs"
            source = e.sources[0] + (f" (+{len(e.sources) - 1})" if len(e.sources) > 1 else "") if e.sources else "?"
            print(f"{e.path.name}  {e.size / 1e6:8.1f} MB  {pairs:>14}  last used {used}  "
                  f"{'stale: ' + e.stale if e.stale else 'current'}  {source}")
        return 0
    if not (args.keys or args.all or args.stale or args.older_than is not None):
        raise UserError("cache clear: say which entries: KEY ..., --stale, --older-than DAYS or --all")
    known = {e.path.name: e for e in entries}
    unknown = [k for k in args.keys if k not in known]
    if unknown:
        raise UserError(f"cache clear: no entry {unknown[0]} in {cache_root()} (see s2s cache list)")
    cutoff = time.time() - 86400 * args.older_than if args.older_than is not None else None
    chosen = [e for e in entries if args.all or e.path.name in args.keys or (args.stale and e.stale)
              or (cutoff is not None and e.last_used < cutoff)]
    freed, busy = 0, []
    for e in chosen:
        if remove_cache_entry(e.path):
            freed += e.size
        else:
            busy.append(e.path.name)
    print(f"removed {len(chosen) - len(busy)} entr{'y' if len(chosen) - len(busy) == 1 else 'ies'} "
          f"({freed / 1e6:.1f} MB) from {cache_root()}"
          + (f"; kept {len(busy)} that a run is writing or opening now: {', '.join(busy)}" if busy else ""))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data.shards import preprocess
    from .tasks import resolve_dataset

    cfg = load_config(args.config, args.overrides)
    cfg.data = resolve_dataset(cfg.data)
    header = preprocess(cfg, args.out_dir)
    train = header["splits"]["train"]
    print(f"{args.out_dir}: {train['pairs']:,} training pairs ({train['src']['tokens']:,} source / "
          f"{train['tgt']['tokens']:,} target tokens; {train['skipped_empty']:,} empty and "
          f"{train['skipped_too_long']:,} too long skipped, {train['cut']:,} sources cut) and the tokenizers")
    print(f"train on them with: s2s train {args.config} data.preprocessed={args.out_dir}")
    return 0


def _input_lines(path: str | None) -> Iterator[tuple[int, str]]:
    """(line number, text) of the input file, or of stdin when there is none (or ``-``)."""
    from .data.corpus import decode_line, read_lines

    if path and path != "-":
        yield from read_lines(path)
        return
    for n, raw in enumerate(sys.stdin.buffer, 1):
        yield n, decode_line(raw.rstrip(b"\r\n"), "<stdin>", n)


def _input_texts(path: str | None, fmt: str) -> Iterable[str]:
    """What ``generate`` applies the model to: each line of a text input (streamed), or the
    ``src`` of each JSONL line (a multi-line dialogue fits in one; other keys are ignored,
    blank lines skipped). A JSONL input is read whole before any output is written, so a bad
    line stops the command with nothing written."""
    from .data.corpus import check_text, detect_format, json_fields

    if fmt == "auto":
        fmt = "jsonl" if path and path != "-" and detect_format(path) == "jsonl" else "text"
    lines = _input_lines(path)
    name = path if path and path != "-" else "<stdin>"
    if fmt == "text":  # what training refuses (NUL and other control characters) is refused here too
        return (check_text(line, name, n, "input") for n, line in lines)
    return [check_text(json_fields(line, name, n, ("src",))[0], name, n, "input") for n, line in lines if line.strip()]



# Search flags -> SearchConfig fields; the flag names are what errors about them show.
SEARCH_FLAGS = {"batch_size": "--batch-size", "max_batch_tokens": "--max-batch-tokens", "beam": "--beam",
                "length_penalty": "--length-penalty", "nbest": "--nbest", "sample": "--sample",
                "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
                "max_input_tokens": "--max-input-tokens", "on_long_input": "--on-long-input",
                "max_output_tokens": "--max-output-tokens", "no_repeat_ngram_size": "--no-repeat-ngram-size",
                "min_len": "--min-len", "repetition_penalty": "--repetition-penalty"}
SEARCH_FIELDS = {"beam": "beam_size"}


def apply_search_flags(tr: Translator, args: argparse.Namespace) -> None:
    """Let the given search flags override the model's ``search`` config, validated like the
    config file itself so a bad value is a one-line error naming the flag."""
    from pydantic import ValidationError

    from .config import Invalid, SearchConfig

    given = {SEARCH_FIELDS.get(k, k): (flag, getattr(args, k)) for k, flag in SEARCH_FLAGS.items()
             if getattr(args, k, None) is not None}  # field -> (flag, value)
    updates = {field: value for field, (_, value) in given.items()}
    try:
        tr.cfg.search = SearchConfig.model_validate({**tr.cfg.search.model_dump(), **updates})
    except ValidationError as e:
        err = e.errors()[0]
        fields = [str(err["loc"][0])] if err["loc"] else []
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Invalid):  # a check across fields: the field at fault, then the others
            fields = [cause.key, *cause.also]
        # the flag of the field at fault if it was given, else the given flag that took part
        flag = next((given[f][0] for f in fields if f in given), "search flags")
        raise ConfigError(f"{flag}: {err['msg'].removeprefix('Value error, ')}") from None


def attention_to_plot(tr: Translator, args: argparse.Namespace) -> int | None:
    """Which attention ``--plot-attention`` keeps (``--attention-layer``, by default the last);
    None, with a warning, for a model that has none. A layer the model lacks is refused."""
    if not args.plot_attention:
        if args.attention_layer is not None:
            raise UserError("--attention-layer: only used with --plot-attention DIR")
        return None
    if args.engine == "ctranslate2":
        raise UserError("--plot-attention: not available with --engine ctranslate2 (use the PyTorch model directory)")
    if tr.attention_layers == 0:  # the plain encoder-decoder: one context vector
        print(f"s2s: warning: --plot-attention: model family {tr.cfg.model.family!r} has no attention: "
              f"no heatmaps written", file=sys.stderr)
        return None
    layer = -1 if args.attention_layer is None else args.attention_layer
    try:
        tr.check_attention_layer(layer)
    except ValueError as e:
        raise UserError(f"--attention-layer: {e}") from None
    return layer


def save_attention_plot(tr: Translator, text: str, hyp: Hypothesis, path: Path) -> None:
    """Heatmap of the best output's attention, labelled with the tokenizers' own pieces
    (``cmd_generate`` has checked that the model returns attention)."""
    from .plots import plot_attention

    assert hyp.attention is not None
    plot_attention(hyp.attention, *tr.attention_pieces(text, hyp), path)


def load_translator(args: argparse.Namespace) -> Translator:
    """The model of ``-m`` (several: an ensemble), run by PyTorch or (``--engine ctranslate2``) by CTranslate2."""
    from .translate import Translator

    if args.engine == "ctranslate2":
        if len(args.model) > 1:
            raise UserError("-m: --engine ctranslate2 runs one model; ensembles need the PyTorch engine")
        return Translator.load(args.model[0], device=args.device, engine="ctranslate2", compute_type=args.compute_type)
    return Translator.ensemble(args.model, checkpoint=args.checkpoint, device=args.device)


def check_output_file(output: Path, input: str | None, force: bool) -> None:
    """``-o`` writes a file: never the input itself or a file of a model directory, and an existing
    non-empty file (nobody can tell a user's file from an earlier output) only with ``--force``."""
    from .rundir import owner_of

    if input and input != "-" and output.exists() and Path(input).exists() and output.samefile(input):
        raise UserError(f"-o {output}: is the input file (-i); write the output elsewhere")
    owner = owner_of(output)
    if owner is not None:
        raise UserError(f"-o {output}: is one of the files of the model directory {owner}; write the output elsewhere")
    if not force and output.is_file() and output.stat().st_size > 0:
        raise UserError(f"-o {output}: exists and is not empty; will not replace it (--force replaces it)")


def one_line(text: str) -> str:
    """An output as one line of the output file: a line break the model generated (its
    ``<sep>`` piece) is written as `` <sep> ``, which reads back as the same piece."""
    from .data.tokenizers import SEP, split_lines

    return f" {SEP} ".join(split_lines(text)) if "\n" in text else text


def cmd_generate(args: argparse.Namespace) -> int:
    from .checkpoint import open_output
    from .translate import chunked, ranking_score

    if args.output:
        check_output_file(Path(args.output), args.input, args.force)
    tr = load_translator(args)
    apply_search_flags(tr, args)
    layer = attention_to_plot(tr, args)
    if layer is not None:
        from .rundir import open_plot_dir

        plot_dir = open_plot_dir(args.plot_attention)
    else:
        plot_dir = None
    show_scores = tr.cfg.search.nbest > 1
    name = args.input if args.input and args.input != "-" else "<stdin>"
    count, start = 0, time.perf_counter()

    def long_input(index: int, length: int, limit: int) -> None:
        action = (f"truncated to its first {limit} tokens" if tr.cfg.search.on_long_input == "truncate"
                  else "refused: its output line is empty")
        print(f"s2s: warning: {name}:{count + index + 1}: {length} tokens, over the limit of {limit} "
              f"(--max-input-tokens, search.max_input_tokens or the model's max_positions): {action}", file=sys.stderr)

    texts = _input_texts(args.input, args.input_format)
    with open_output(args.output) if args.output else contextlib.nullcontext(sys.stdout) as f:
        for chunk in chunked(texts, 2000):
            for text, hyps in zip(chunk, tr.nbest_hypotheses(chunk, layer, long_input)):
                count += 1
                if plot_dir and hyps[0].attention is not None:  # none: a refused input
                    save_attention_plot(tr, text, hyps[0], plot_dir / f"{count:04d}.png")
                for h in hyps if show_scores else hyps[:1]:
                    out = one_line(tr.tgt_tok.decode(h.tokens))
                    f.write(f"{out}\t{ranking_score(h):.4f}\n" if show_scores else out + "\n")
        f.flush()
    if args.output and not args.quiet:
        seconds = time.perf_counter() - start
        print(f"s2s: generated {count} line{'' if count == 1 else 's'} in {seconds:.1f} s "
              f"({count / max(seconds, 1e-9):.1f} lines/s) -> {args.output}", file=sys.stderr)
    return 0


def _note_repeated_sources(data: EvalSet, args: argparse.Namespace) -> None:
    """Say when rows were scored one by one although some share a source (G2P: a word's
    alternative pronunciations), since grouping them gives another number."""
    if data.repeated_sources and not args.quiet:
        print(f"s2s: note: {data.repeated_sources} rows repeat an earlier row's source and were scored row by row; "
              f"--group-by-source scores each source once against all its references", file=sys.stderr)


def _group_labels(args: argparse.Namespace, data: EvalSet, metrics: list[str]) -> list[str] | None:
    """``--by-field KEY``: each item's value of KEY in the JSONL --src (None without the flag);
    ``--fail-above`` is checked against the metrics here too."""
    from .evaluate import item_labels

    if args.fail_above is not None:
        if not args.by_field:
            raise UserError("--fail-above: counts the groups of --by-field KEY; add --by-field")
        if args.fail_above[0] not in metrics:
            raise UserError(f"--fail-above {args.fail_above[0]}={args.fail_above[1]:g}: "
                            f"{args.fail_above[0]} is not among the metrics ({' '.join(metrics)})")
    if not args.by_field:
        return None
    if not args.src:
        raise UserError(f"--by-field {args.by_field}: needs the JSONL --src whose lines hold the field")
    return item_labels(data, args.src, args.by_field)


def _fail_above(text: str) -> tuple[str, float]:
    """``METRIC=VALUE`` of --fail-above."""
    metric, _, value = text.partition("=")
    try:
        if metric:
            return metric, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected METRIC=VALUE, e.g. wer=5, got {text!r}")


def evaluate_hypotheses(args: argparse.Namespace) -> int:
    """``--hyp FILE``: score outputs made elsewhere exactly as ``-m`` scores a model's outputs."""
    from . import metrics as M
    from .evaluate import format_examples, load_eval_set, load_references, read_hypotheses

    if args.src:
        data = load_eval_set(args.src, args.ref, group_by_source=bool(args.group_by_source))
    elif args.ref:
        if args.group_by_source:
            raise UserError("--group-by-source: needs the sources to group by: add --src (a text file "
                            "line-aligned with --ref, or one TSV/JSONL file holding src and tgt)")
        if args.examples:
            raise UserError("--examples: needs the sources to show: add --src (a text file line-aligned with --ref)")
        data = load_references(args.ref)
    else:
        raise UserError("--hyp: give the references: --ref FILE, or --src FILE (TSV/JSONL holding src and tgt)")
    if "ppl" in (args.metrics or []):
        raise UserError("--metrics ppl: the perplexity is the model's: give -m MODEL_DIR instead of --hyp")
    metrics = args.metrics or ["bleu", "chrf"]
    labels = _group_labels(args, data, metrics)
    hyps = read_hypotheses(args.hyp, data, args.ref or args.src)
    if args.group_by_source is None:
        _note_repeated_sources(data, args)
    if labels is None:
        print(M.score(hyps, data.refs, metrics).format())
    else:
        print(M.score_groups(hyps, data.refs, labels, metrics).format(args.by_field, args.fail_above))
    if args.examples:
        print(format_examples(data, hyps, args.examples))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_model, format_examples, load_eval_set, perplexity

    if args.examples < 0:
        raise UserError(f"--examples: must be at least 0, got {args.examples}")
    if args.model is None:
        if not args.hyp:
            raise UserError("evaluate: give -m MODEL_DIR --src FILE, or --hyp FILE with --ref FILE and/or --src FILE")
        return evaluate_hypotheses(args)
    if args.hyp:
        raise UserError("--hyp: scores outputs made elsewhere, -m runs a model: give one of them")
    tr = load_translator(args)
    apply_search_flags(tr, args)
    if not args.src:
        raise UserError("evaluate: --src is required with -m (a TSV/JSONL file, or a text file with --ref)")
    group = tr.cfg.evaluation.group_by_source if args.group_by_source is None else args.group_by_source
    data = load_eval_set(args.src, args.ref, group_by_source=group)
    if args.group_by_source is None:
        _note_repeated_sources(data, args)
    metrics = args.metrics or tr.cfg.evaluation.metrics
    if "ppl" in metrics and args.engine == "ctranslate2":
        raise UserError("--metrics ppl: needs the PyTorch model (the perplexity is a teacher-forced pass), not --engine ctranslate2")
    labels = _group_labels(args, data, metrics)  # before decoding: a bad --by-field fails at once
    if labels is None:
        scores, hyps = evaluate_model(tr, data, [m for m in metrics if m != "ppl"])
        if "ppl" in metrics:
            scores.values = {m: perplexity(tr, data) if m == "ppl" else scores.values[m] for m in metrics}
        print(scores.format())
    else:
        if "ppl" in metrics:
            raise UserError("--metrics ppl: not computed per group (--by-field); score it without --by-field")
        from . import metrics as M

        hyps = tr.translate(data.sources)  # type: ignore[arg-type]
        print(M.score_groups(hyps, data.refs, labels, metrics).format(args.by_field, args.fail_above))
    if args.examples:
        print(format_examples(data, hyps, args.examples))
    return 0


def _chat_lines(prompt: str) -> Iterator[tuple[int, str]]:
    """What the user types, numbered from 1: with a prompt (and line editing) on a terminal, else
    the lines of stdin."""
    if not sys.stdin.isatty():
        yield from _input_lines(None)
        return
    import readline  # noqa: F401  (line editing and history for input())

    for lineno in itertools.count(1):
        try:
            yield lineno, input(prompt)
        except EOFError:
            print(file=sys.stderr)
            return


def cmd_chat(args: argparse.Namespace) -> int:
    """Talk to a dialogue model: each reply is generated from the last N turns (the user's and
    the model's), one a line as in training; ``/reset`` forgets them, end of input quits."""
    from .data.corpus import check_text
    from .data.tokenizers import split_lines
    from .tasks.dailydialog import DEFAULT_TURNS

    tr = load_translator(args)
    apply_search_flags(tr, args)
    if args.turns is not None and args.turns < 1:
        raise UserError(f"--turns: must be at least 1, got {args.turns}")
    turns = args.turns or tr.cfg.data.context_turns or DEFAULT_TURNS
    tty = sys.stdin.isatty()
    if tty:
        print(f"s2s chat: {args.model[0]}, {turns} turn{'s' if turns != 1 else ''} of history; "
              f"/reset clears it, Ctrl-D quits", file=sys.stderr)
    history: list[str] = []
    for lineno, line in _chat_lines("you> "):
        try:  # what generate refuses (NUL, escape, lone surrogates, ...) is no turn either
            check_text(line, "<stdin>", lineno, "input")
        except DataError as e:
            if not tty:
                raise  # piped input: one line and exit 2, as generate
            print(f"s2s chat: {e}; line ignored", file=sys.stderr)  # typed: say so, and go on
            continue
        text = " ".join(split_lines(line))  # one turn: one line
        if not text.strip():
            print("s2s chat: empty line ignored (/reset clears the history, end of input quits)", file=sys.stderr)
            continue
        if text.strip() == "/reset":
            history.clear()
            print("s2s chat: history cleared", file=sys.stderr)
            continue
        history = (history + [text.strip()])[-turns:]
        reply = " ".join(split_lines(tr.translate("\n".join(history))[0]))
        if reply:  # an empty reply is printed (an empty line) but is no turn
            history = (history + [reply])[-turns:]
        print(f"bot> {reply}" if tty else reply, flush=True)
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data.corpus import count_and_stats

    stats = count_and_stats(args.src, args.tgt, fmt=args.format)
    name = args.src if args.tgt is None else f"{args.src} + {args.tgt}"
    print(stats.format_report(name))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.dataset == "dailydialog":
        from .tasks import dailydialog

        if args.turns is not None and args.turns < 1:
            raise UserError(f"--turns: must be at least 1, got {args.turns}")
        paths = dailydialog.prepare(args.archive_dir, args.out_dir, turns=args.turns or dailydialog.DEFAULT_TURNS)
    elif args.dataset == "samsum":
        from .tasks import samsum

        paths = samsum.prepare(args.archive, args.out_dir)
    elif args.dataset == "babi":
        from .tasks import babi

        paths = babi.prepare(args.archive, args.out_dir, size=args.size)
    elif args.dataset == "tweetqa":
        from .tasks import tweetqa

        paths = tweetqa.prepare(args.data_dir, args.out_dir)
    else:
        from .tasks import cmudict

        paths = cmudict.prepare(args.out_dir) if args.out_dir else cmudict.prepare_cached()
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    """Average the weights of the last N epoch checkpoints into checkpoints/NAME.pt."""
    from .checkpoint import write_average

    out, chosen = write_average(Path(args.model), args.last, args.output)
    print(f"{out}: mean of {', '.join(p.name for p in chosen)}  (use it with --checkpoint {args.output})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Convert a trained Transformer into a CTranslate2 model directory."""
    from .ct2 import export_ctranslate2

    out = export_ctranslate2(args.model, args.out_dir, checkpoint=args.checkpoint,
                             quantization=args.quantization, force=args.force)
    print(f"{out}: CTranslate2 model ({args.quantization or 'float32'} weights); "
          f"try: s2s translate -m {out} --engine ctranslate2")
    return 0


def check_listen_address(host: str, port: int) -> None:
    """``--host``/``--port`` that the server could not listen on (a port out of range, an
    unknown host, a port in use or reserved) are one line before any work, not uvicorn's
    traceback or its exit after the models have loaded."""
    import socket

    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: not a TCP port (0-65535; 0 picks a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"--host {host}: not an address of this machine ({e})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the models of ``-m`` over HTTP until SIGINT/SIGTERM (then finish what is in flight)."""
    from pydantic import ValidationError

    try:
        import uvicorn

        from .serve import Limits, create_app, load_models
    except ImportError as e:
        raise UserError(f"serve: {e.name} is not installed: pip install 'seq2seq-kit[serve]'") from None
    check_listen_address(args.host, args.port)  # before the models load: a bad address is found in a second
    if args.no_batching:
        args.batching = "off"
    fields = {k: getattr(args, k) for k in Limits.model_fields if getattr(args, k, None) is not None}
    try:
        limits = Limits(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg'].removeprefix('Value error, ')}") from None
    models = load_models(args.model, args.name, engine=args.engine, ensemble=args.ensemble,
                         checkpoint=args.checkpoint, device=args.device, compute_type=args.compute_type)
    for tr in models.values():
        apply_search_flags(tr, args)
    logging.getLogger("seq2seqkit.serve").setLevel(logging.WARNING if args.quiet else logging.INFO)
    for name, tr in models.items():
        log.info("serving %s: %r", name, tr)
    log.info("http://%s:%d/ (API docs: /docs); batching across requests: %s", args.host, args.port,
             {"step": "step-level", "request": "by request", "off": "off"}[limits.batching])
    uvicorn.run(create_app(models, limits), host=args.host, port=args.port, access_log=False,
                log_level="warning" if args.quiet else "info", timeout_graceful_shutdown=limits.timeout_s + 5)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the embedded G2P task with the quick config, then score its test split."""
    from .config import load_config
    from .evaluate import evaluate_model, format_examples, load_eval_set
    from .rundir import remove_model_dir
    from .training import Trainer, load_for_resume
    from .translate import Translator

    out = Path(args.output_dir)
    overrides = [f"output_dir={out}"] + args.overrides
    if args.retrain and (out.exists() or out.is_symlink()):
        # only a demo model directory this toolkit wrote, holding nothing else, not in use
        remove_model_dir(out, name=load_config(CONFIG_DIR / "g2p-quick.yaml", overrides).name)
    last = out / "checkpoints" / "last.pt"
    if last.exists():
        cfg = load_for_resume(out, args.overrides)
        trainer = Trainer(cfg, resume=True)
        if trainer.progress.done:
            trainer.close()
            print(f"{out} already holds the trained demo model ({trainer.where()}); "
                  f"pass --retrain to train it again")
        else:
            trainer.train()
    else:
        cfg = load_config(CONFIG_DIR / "g2p-quick.yaml", overrides)
        Trainer(cfg).train()
    tr = Translator.load(out)
    data = load_eval_set(tr.cfg.data.test.path, group_by_source=True)  # type: ignore[arg-type]
    scores, hyps = evaluate_model(tr, data, ["wer", "per", "exact", "chrf"])
    print(f"\nG2P test split ({len(data.refs)} words), greedy decoding:")
    print(scores.format())
    print("\nexamples:")
    print(format_examples(data, hyps, 10))
    print("\nTry it:  echo 'seq2seq' | .venv/bin/s2s translate -m", out)
    return 0


# -------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s2s", description="seq2seq-kit: train and use encoder-decoder models.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", nargs="?", help="CONFIG.yaml")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. training.epochs=2")
    t.add_argument("--resume", metavar="MODEL_DIR", help="continue the run saved in MODEL_DIR")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="train in N processes on this machine (DistributedDataParallel, started by torchrun; "
                        "several machines: see README, Distributed training)")
    t.set_defaults(fn=cmd_train)

    pp = sub.add_parser("preprocess", help="tokenize a config's training data once into shards on disk "
                                           "(train on them with data.preprocessed=OUT_DIR)")
    pp.add_argument("config", help="CONFIG.yaml")
    pp.add_argument("out_dir", metavar="OUT_DIR", help="where to write the shards and tokenizers (a new directory)")
    pp.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. tokenizer.src.vocab_size=16000")
    pp.set_defaults(fn=cmd_preprocess)

    ca = sub.add_parser("cache", help="list or clear the tokenized training data that runs cache (data.cache)")
    ca.add_argument("action", choices=["list", "clear"])
    ca.add_argument("keys", nargs="*", metavar="KEY", help="clear: these entries (names from `s2s cache list`)")
    ca.add_argument("--stale", action="store_true", help="clear: entries whose training files changed or are gone")
    ca.add_argument("--older-than", type=float, metavar="DAYS", help="clear: entries no run used for DAYS days")
    ca.add_argument("--all", action="store_true", help="clear: every entry")
    ca.set_defaults(fn=cmd_cache)

    def model_args(sp: argparse.ArgumentParser, required: bool) -> None:
        sp.add_argument("-m", "--model", required=required, metavar="MODEL_DIR", nargs="+", action="extend",
                        help="a model directory; several (-m A B) decode as an ensemble (same tokenizers)")
        sp.add_argument("--checkpoint", default="best", help="best, last, averaged (see `s2s average`), or a .pt path (default: best)")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sp.add_argument("--engine", default="torch", choices=["torch", "ctranslate2"],
                        help="decode with PyTorch (default) or CTranslate2 (-m then names an `s2s export` directory)")
        sp.add_argument("--compute-type", default="default", metavar="TYPE",
                        help="with --engine ctranslate2: int8, int8_float32, float32, ... (default: as exported)")

    def search_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--beam", type=int, metavar="N", help="beam size (1: greedy search)")
        sp.add_argument("--length-penalty", type=float, metavar="A",
                        help="GNMT length penalty alpha for beam search: score / ((5 + length) / 6) ** A")
        sp.add_argument("--max-input-tokens", type=int, metavar="N",
                        help="inputs longer than N source tokens are truncated or refused (--on-long-input)")
        sp.add_argument("--on-long-input", choices=["truncate", "refuse"],
                        help="an over-long input is cut to the limit, or refused (empty output); a warning names it")
        sp.add_argument("--max-output-tokens", type=int, metavar="N", help="no output longer than N tokens")
        sp.add_argument("--no-repeat-ngram-size", type=int, metavar="N",
                        help="no n-gram of N tokens occurs twice in an output (0: off)")
        sp.add_argument("--min-len", type=int, metavar="N",
                        help="no output shorter than N tokens (EOS not counted): EOS is blocked until then")
        sp.add_argument("--repetition-penalty", type=float, metavar="P",
                        help="CTRL repetition penalty: log-probs of tokens already output are multiplied by P (>1: fewer repeats)")

    def sampling_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--sample", action="store_true", default=None, help="sample outputs instead of searching")
        sp.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
        sp.add_argument("--top-k", type=int, metavar="K", help="sample from the K most probable tokens (0: all)")
        sp.add_argument("--top-p", type=float, metavar="P", help="sample from the smallest set of probability P")

    tr = sub.add_parser("generate", aliases=["translate"], help="apply a model to each input (lines or JSONL) of a file or stdin")
    model_args(tr, True)
    tr.add_argument("-i", "--input", help="input file (default: stdin)")
    tr.add_argument("--input-format", default="auto", choices=["auto", "text", "jsonl"],
                    help="text: one input a line; jsonl: the \"src\" of each line's object (multi-line inputs); "
                         "auto (default): jsonl for a .jsonl/.json file, else text")
    tr.add_argument("-o", "--output", help="output file (default: stdout); written atomically (a device or pipe such "
                                           "as /dev/null in place); an existing non-empty file is replaced only with --force")
    tr.add_argument("--force", action="store_true", help="replace the -o file if it exists")
    tr.add_argument("--batch-size", type=int, help="sentences per batch")
    tr.add_argument("--max-batch-tokens", type=int, metavar="N", help="at most N source tokens x beam per batch, "
                    "padding counted (default: the model's search.max_batch_tokens, 262144)")
    search_args(tr)
    tr.add_argument("--nbest", type=int, metavar="N", help="print the N best outputs per input as OUTPUT<TAB>SCORE")
    sampling_args(tr)
    tr.add_argument("--plot-attention", metavar="DIR", help="write an attention heatmap per input: DIR/0001.png ... (DIR: "
                                                            "new, empty, or an earlier --plot-attention's, replaced)")
    tr.add_argument("--attention-layer", type=int, metavar="N", help="with --plot-attention: which decoder layer's attention to plot (Transformer)")
    tr.set_defaults(fn=cmd_generate)

    ev = sub.add_parser("evaluate", help="score a model, or a file of outputs, against references")
    model_args(ev, False)
    ev.add_argument("--src", help="source file (text with --ref, or one TSV/JSONL file); with --hyp: the sources "
                                  "to group by")
    ev.add_argument("--ref", help="reference file, line-aligned")
    ev.add_argument("--hyp", help="outputs to score instead of running a model: one line per row of the "
                                  "references, or (grouped) one per distinct source")
    ev.add_argument("--metrics", nargs="+", choices=["bleu", "chrf", "wer", "per", "exact", "rouge1", "rouge2", "rougeL", "rougeLsum",
                                                        "bleu1", "bleu2", "distinct1", "distinct2", "length", "ppl"],
                    help="default: the model's evaluation.metrics (bleu chrf with --hyp); ROUGE F1: rouge1 rouge2 rougeL "
                         "rougeLsum; dialogue: bleu1 bleu2 distinct1 distinct2 length (mean output tokens); ppl: "
                         "the model's perplexity on the references (-m only)")
    ev.add_argument("--group-by-source", action=argparse.BooleanOptionalAction, default=None,
                    help="identical sources count once, their targets as alternative references")
    ev.add_argument("--by-field", metavar="KEY",
                    help="also score each group of rows sharing the value of KEY in the JSONL --src (e.g. task: "
                         "bAbI), with the unweighted mean over the groups")
    ev.add_argument("--fail-above", type=_fail_above, metavar="METRIC=VALUE",
                    help="with --by-field: count the groups whose METRIC is above VALUE (bAbI: wer=5, "
                         "a task failed at more than 5%% wrong answers)")
    ev.add_argument("--examples", type=int, default=0, help="show N example predictions")
    search_args(ev)
    ev.set_defaults(fn=cmd_evaluate)

    ch = sub.add_parser("chat", help="talk to a dialogue model in the terminal (or one reply per line of stdin)")
    model_args(ch, True)
    ch.add_argument("--turns", type=int, metavar="N",
                    help="previous turns (yours and the model's) in each source (default: the model's "
                         f"data.context_turns, else 3 as prepare's default)")
    search_args(ch)
    sampling_args(ch)
    ch.set_defaults(fn=cmd_chat)

    cd = sub.add_parser("check-data", help="validate a corpus and print its statistics")
    cd.add_argument("src", help="source file, or one TSV/JSONL file")
    cd.add_argument("tgt", nargs="?", help="target file, line-aligned with src")
    cd.add_argument("--format", default="auto", choices=["auto", "text", "tsv", "jsonl"])
    cd.set_defaults(fn=cmd_check_data)

    pr = sub.add_parser("prepare", help="write a data set's splits to files (cmudict, samsum, dailydialog, babi, tweetqa)")
    datasets = pr.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    pc = datasets.add_parser("cmudict", help="English G2P from the CMU Pronouncing Dictionary (in the cmudict package)")
    pc.add_argument("out_dir", nargs="?", help="where to write train/dev/test.tsv (default: the cache)")
    ps = datasets.add_parser("samsum", help="SAMSum dialogue summarization, converted from its published archive")
    ps.add_argument("archive", help="samsum.zip as published, or the folder it extracts to")
    ps.add_argument("out_dir", nargs="?", default="data/samsum",
                    help="where to write train/val/test.jsonl (default: data/samsum, where configs/samsum-attention.yaml reads)")
    pb = datasets.add_parser("babi", help="bAbI question answering, the 20 tasks in one set, from its published archive")
    pb.add_argument("archive", help="babi-tasks-1-20-v1-2.tar.gz as published, or the folder it extracts to")
    pb.add_argument("out_dir", nargs="?", help="where to write train/valid/test.jsonl (default: data/babi-1k or "
                                               "data/babi-10k; configs/babi-transformer.yaml reads data/babi-1k)")
    pb.add_argument("--size", default="1k", choices=["1k", "10k"], help="training questions per task (default: 1k)")
    pq = datasets.add_parser("tweetqa", help="TweetQA question answering over tweets, from its published files")
    pq.add_argument("data_dir", help="the folder holding train.json.gz and dev.json.gz")
    pq.add_argument("out_dir", nargs="?", default="data/tweetqa",
                    help="where to write train/tune/test.jsonl (default: data/tweetqa, where "
                         "configs/tweetqa-attention.yaml reads); test is the official dev set")
    pd = datasets.add_parser("dailydialog", help="DailyDialog open-domain dialogue: (context, next utterance) pairs")
    pd.add_argument("archive_dir", help="the folder holding train.zip, validation.zip, test.zip as published")
    pd.add_argument("out_dir", nargs="?", default="data/dailydialog",
                    help="where to write train/val/test/test-unseen.jsonl (default: data/dailydialog, where "
                         "configs/dailydialog-transformer.yaml reads)")
    pd.add_argument("--turns", type=int, metavar="N",
                    help="previous utterances in each source, one a line (default: 3)")
    pr.set_defaults(fn=cmd_prepare)

    av = sub.add_parser("average", help="average the last epochs' weights (checkpoint averaging)")
    av.add_argument("model", metavar="MODEL_DIR")
    av.add_argument("--last", type=int, default=5, metavar="N", help="how many of the last epochs (default: 5)")
    av.add_argument("--output", default="averaged", metavar="NAME", help="writes checkpoints/NAME.pt (default: averaged)")
    av.set_defaults(fn=cmd_average)

    ex = sub.add_parser("export", help="convert a trained Transformer for another inference engine")
    ex.add_argument("--format", required=True, choices=["ctranslate2"])
    ex.add_argument("model", metavar="MODEL_DIR")
    ex.add_argument("out_dir", metavar="OUT_DIR")
    ex.add_argument("--checkpoint", default="best", help="best, last, averaged, or a .pt path (default: best)")
    ex.add_argument("--quantization", choices=["int8", "int8_float32", "int16", "float16", "bfloat16", "float32"],
                    help="store the weights quantized (default: float32)")
    ex.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    ex.set_defaults(fn=cmd_export)

    sv = sub.add_parser("serve", help="serve models over HTTP: a JSON API that batches concurrent requests")
    model_args(sv, True)
    sv.add_argument("--name", nargs="+", metavar="NAME", help="the name each model is served under "
                    "(default: its directory's name)")
    sv.add_argument("--ensemble", action="store_true", help="serve the -m directories as one ensemble")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    from .serve.limits import Limits  # pydantic only: the app's modules load when `serve` runs

    d = Limits().model_dump()
    for flag, kind, what in (
        ("--max-inputs", int, "inputs per request"), ("--max-chars", int, "characters per input"),
        ("--max-body-bytes", int, "bytes of a request body"),
        ("--max-queue", int, "requests waiting; more get 429 with Retry-After"),
        ("--timeout-s", float, "seconds before a request gets 504"),
        ("--max-beam", int, "the largest beam_size and n_best a request may ask for"),
        ("--max-wait-ms", float, "how long the first request of a request-level batch waits for more"),
        ("--max-batch-tokens", int, "source tokens that close a batch (step: of the rows decoding at once)"),
        ("--join-fraction", float, "step: newcomers join the running batch once the inputs waiting number this "
                                   "share of its rows (0: before every step)"),
        ("--join-wait-steps", int, "step: ... or after this many steps of waiting"),
    ):
        sv.add_argument(flag, type=kind, metavar="N", help=f"{what} (default: {d[flag[2:].replace('-', '_')]:g})")
    batching = sv.add_mutually_exclusive_group()
    batching.add_argument("--batching", choices=["step", "request", "off"], default=d["batching"],
                          help="how concurrent requests share the model: step: greedy and sampled requests join "
                               "the running batch before any decoding step and leave it when done (continuous "
                               "batching; beam search batches by request); request: a batch of requests decodes "
                               "to its end; off: one request at a time (default: %(default)s)")
    batching.add_argument("--no-batching", action="store_true", help="the same as --batching off")
    sv.add_argument("--batch-size", type=int, help="sentences per decoding batch (default: the model's)")
    search_args(sv)  # the served models' search defaults, which each request may override
    sv.add_argument("--nbest", type=int, metavar="N", help="outputs per input by default")
    sampling_args(sv)
    sv.set_defaults(fn=cmd_serve)

    de = sub.add_parser("demo", help="train and evaluate the embedded G2P task (quick config)")
    de.add_argument("--output-dir", default="runs/demo")
    de.add_argument("--retrain", action="store_true", help="delete an earlier demo model first")
    de.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    de.set_defaults(fn=cmd_demo)
    return p


def describe_os_error(e: OSError, writing: str | None = None) -> str:
    """``PATH: strerror`` for a fault of the operating system (read-only, disk full, no permission).
    A write or close that fails (a full disk) names no file: then ``writing``, the directory the
    command writes into (``OUT_DIR``), is named instead, where the command has one."""
    what = e.strerror or str(e)
    if e.errno == errno.ENOTDIR:
        what += " (a part of the path is a file)"
    elif e.errno == errno.EEXIST:  # mkdir over a file
        what += " (a file where a directory is needed)"
    if e.filename is None:
        return f"{writing} (writing into it): {what}" if writing else what
    if e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {what}"
    return f"{e.filename}: {what}"


def _error(message: object) -> int:
    """Print ``s2s: error: ...`` as one line (a library's multi-line reason folded in) and return 2."""
    text = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"s2s: error: {text}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and args.fn in (cmd_train, cmd_demo):  # the program itself, about to train
        try:
            run_under_jemalloc()  # returns only if it does not restart the program
        except ValueError as e:
            return _error(e)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    configure_process()  # before any command imports torch: OpenMP reads its wait policy once, at load
    try:
        return args.fn(args)
    except (UserError, DataError) as e:
        if args.debug:
            raise
        return _error(e)
    except KeyboardInterrupt:
        print("s2s: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `s2s translate ... | head`
        return 0
    except OSError as e:  # read-only location, full disk, no permission: the file and the reason
        if args.debug:
            raise
        return _error(describe_os_error(e, getattr(args, "out_dir", None)))


if __name__ == "__main__":
    sys.exit(main())
