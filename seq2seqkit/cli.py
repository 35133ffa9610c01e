"""The ``s2s`` command line: train, translate, evaluate, average, export, check-data, prepare, demo.

User errors (bad files, bad config keys, bad arguments) print one line on stderr and exit
with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, DataError, UserError

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only when a command needs them
    from .search import Hypothesis
    from .translate import Translator

log = logging.getLogger("seq2seqkit")
CONFIG_DIR = Path(__file__).parent / "configs"


# ------------------------------------------------------------------------------ commands
def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import Trainer, load_for_resume

    if args.resume:
        overrides = ([args.config] if args.config else []) + args.overrides  # `--resume DIR k=v ...`
        cfg = load_for_resume(args.resume, overrides)
    else:
        if not args.config:
            raise UserError("train: give a CONFIG.yaml (or --resume MODEL_DIR)")
        cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, resume=bool(args.resume))
    trainer.train()
    if trainer.stopped:  # SIGINT/SIGTERM: checkpoint of the last finished update saved
        print(f"s2s: stopped at step {trainer.progress.step}; continue with: s2s train --resume {cfg.output_dir}",
              file=sys.stderr)
        return 143 if trainer.stopped == "SIGTERM" else 130
    print(f"model directory: {cfg.output_dir}")
    return 0


def _input_lines(path: str | None) -> Iterator[str]:
    from .data.corpus import decode_line, read_lines

    if path and path != "-":
        for _, line in read_lines(path):
            yield line
        return
    for n, raw in enumerate(sys.stdin.buffer, 1):
        yield decode_line(raw.rstrip(b"\r\n"), "<stdin>", n)


# Search flags -> SearchConfig fields; the flag names are what errors about them show.
SEARCH_FLAGS = {"batch_size": "--batch-size", "beam": "--beam", "length_penalty": "--length-penalty",
                "nbest": "--nbest", "sample": "--sample", "temperature": "--temperature", "top_k": "--top-k",
                "top_p": "--top-p", "max_input_tokens": "--max-input-tokens", "on_long_input": "--on-long-input",
                "max_output_tokens": "--max-output-tokens", "no_repeat_ngram_size": "--no-repeat-ngram-size",
                "min_len": "--min-len", "repetition_penalty": "--repetition-penalty"}
SEARCH_FIELDS = {"beam": "beam_size"}


def apply_search_flags(tr: Translator, args: argparse.Namespace) -> None:
    """Let the given search flags override the model's ``search`` config, validated like the
    config file itself so a bad value is a one-line error naming the flag."""
    from pydantic import ValidationError

    from .config import SearchConfig

    updates = {SEARCH_FIELDS.get(k, k): getattr(args, k) for k in SEARCH_FLAGS if getattr(args, k, None) is not None}
    try:
        tr.cfg.search = SearchConfig.model_validate({**tr.cfg.search.model_dump(), **updates})
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"]:
            field = str(err["loc"][0])
        else:  # a check across fields: the first field its message names among those given
            field = next((w for w in re.findall(r"\w+", msg) if w in updates), "")
        flag = next((f for k, f in SEARCH_FLAGS.items() if SEARCH_FIELDS.get(k, k) == field), "search flags")
        raise ConfigError(f"{flag}: {msg}") from None


def attention_to_plot(tr: Translator, args: argparse.Namespace) -> int | None:
    """Which attention ``--plot-attention`` keeps (``--attention-layer``, by default the last);
    None, with a warning, for a model that has none. A layer the model lacks is refused."""
    from .models.base import check_attention_layer

    if not args.plot_attention:
        if args.attention_layer is not None:
            raise UserError("--attention-layer: only used with --plot-attention DIR")
        return None
    if args.engine == "ctranslate2":
        raise UserError("--plot-attention: not available with --engine ctranslate2 (use the PyTorch model directory)")
    if tr.model.attention_layers == 0:  # the plain encoder-decoder: one context vector
        print(f"s2s: warning: --plot-attention: model family {tr.cfg.model.family!r} has no attention: "
              f"no heatmaps written", file=sys.stderr)
        return None
    layer = -1 if args.attention_layer is None else args.attention_layer
    try:
        check_attention_layer(tr.model, layer)
    except ValueError as e:
        raise UserError(f"--attention-layer: {e}") from None
    return layer


def save_attention_plot(tr: Translator, text: str, hyp: Hypothesis, path: Path) -> None:
    """Heatmap of the best output's attention, labelled with the tokenizers' own pieces
    (``cmd_translate`` has checked that the model returns attention)."""
    from .data.tokenizers import EOS, SPECIALS
    from .plots import plot_attention

    assert hyp.attention is not None
    eos = [SPECIALS[EOS]] if hyp.attention.size(0) > len(hyp.tokens) else []
    source = tr.src_tok.pieces(text)[: hyp.attention.size(1) - 1]  # as decoded: a long input is truncated
    plot_attention(hyp.attention, source + [SPECIALS[EOS]],
                   [tr.tgt_tok.id_to_piece(t) for t in hyp.tokens] + eos, path)


def load_translator(args: argparse.Namespace) -> Translator:
    """The model of ``-m`` (several: an ensemble), run by PyTorch or (``--engine ctranslate2``) by CTranslate2."""
    if args.engine == "ctranslate2":
        from .ct2 import CTranslate2Translator

        if len(args.model) > 1:
            raise UserError("-m: --engine ctranslate2 runs one model; ensembles need the PyTorch engine")
        return CTranslate2Translator.load(args.model[0], device=args.device, compute_type=args.compute_type)
    from .translate import Translator

    return Translator.ensemble(args.model, checkpoint=args.checkpoint, device=args.device)


def cmd_translate(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_open
    from .translate import chunked, ranking_score

    tr = load_translator(args)
    apply_search_flags(tr, args)
    layer = attention_to_plot(tr, args)
    plot_dir = Path(args.plot_attention) if layer is not None else None
    show_scores = tr.cfg.search.nbest > 1
    name = args.input if args.input and args.input != "-" else "<stdin>"
    count = 0

    def long_input(index: int, length: int, limit: int) -> None:
        action = (f"truncated to its first {limit} tokens" if tr.cfg.search.on_long_input == "truncate"
                  else "refused: its output line is empty")
        print(f"s2s: warning: {name}:{count + index + 1}: {length} tokens, over the limit of {limit} "
              f"(--max-input-tokens, search.max_input_tokens or the model's max_positions): {action}", file=sys.stderr)

    with atomic_open(args.output) if args.output else contextlib.nullcontext(sys.stdout) as f:
        for chunk in chunked(_input_lines(args.input), 2000):
            for text, hyps in zip(chunk, tr.nbest_hypotheses(chunk, layer, long_input)):
                count += 1
                if plot_dir and hyps[0].attention is not None:  # none: a refused input
                    save_attention_plot(tr, text, hyps[0], plot_dir / f"{count:04d}.png")
                for h in hyps if show_scores else hyps[:1]:
                    out = tr.tgt_tok.decode(h.tokens)
                    f.write(f"{out}\t{ranking_score(h):.4f}\n" if show_scores else out + "\n")
        f.flush()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import metrics as M
    from .evaluate import evaluate_model, format_examples, load_eval_set

    if args.model is None:
        if not args.hyp or not args.ref:
            raise UserError("evaluate: give -m MODEL_DIR --src FILE --ref FILE, or --hyp FILE --ref FILE")
        data = load_eval_set(args.hyp, args.ref)
        metrics = args.metrics or ["bleu", "chrf"]
        print(M.score(data.sources, data.refs, metrics).format())
        return 0
    tr = load_translator(args)
    apply_search_flags(tr, args)
    if not args.src:
        raise UserError("evaluate: --src is required with -m (a TSV/JSONL file, or a text file with --ref)")
    group = tr.cfg.evaluation.group_by_source if args.group_by_source is None else args.group_by_source
    data = load_eval_set(args.src, args.ref, group_by_source=group)
    scores, hyps = evaluate_model(tr, data, args.metrics or tr.cfg.evaluation.metrics)
    print(scores.format())
    if args.examples:
        print(format_examples(data, hyps, args.examples))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data.corpus import count_and_stats

    stats = count_and_stats(args.src, args.tgt, fmt=args.format)
    name = args.src if args.tgt is None else f"{args.src} + {args.tgt}"
    print(stats.format_report(name))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .tasks import cmudict

    out = Path(args.out_dir) if args.out_dir else cmudict.default_dir()
    for split, path in cmudict.prepare(out).items():
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the embedded G2P task with the quick config, then score its test split."""
    from .config import load_config
    from .evaluate import evaluate_model, format_examples, load_eval_set
    from .training import Trainer, load_for_resume
    from .translate import Translator

    out = Path(args.output_dir)
    overrides = [f"output_dir={out}"] + args.overrides
    if args.retrain and out.exists():
        shutil.rmtree(out)
    last = out / "checkpoints" / "last.pt"
    if last.exists():
        cfg = load_for_resume(out, args.overrides)
        trainer = Trainer(cfg, resume=True)
        if trainer.progress.done:
            print(f"{out} already holds the trained demo model (pass --retrain to train it again)")
        else:
            trainer.train()
    else:
        cfg = load_config(CONFIG_DIR / "g2p-quick.yaml", overrides)
        Trainer(cfg).train()
    tr = Translator.load(out)
    data = load_eval_set(tr.cfg.data.test.path, group_by_source=True)  # type: ignore[arg-type]
    scores, hyps = evaluate_model(tr, data, ["wer", "per", "exact", "chrf"])
    print(f"\nG2P test split ({len(data.sources)} words), greedy decoding:")
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
    t.set_defaults(fn=cmd_train)

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

    tr = sub.add_parser("translate", help="translate lines from a file or stdin")
    model_args(tr, True)
    tr.add_argument("-i", "--input", help="input file (default: stdin)")
    tr.add_argument("-o", "--output", help="output file (default: stdout); written atomically")
    tr.add_argument("--batch-size", type=int, help="sentences per batch")
    search_args(tr)
    tr.add_argument("--nbest", type=int, metavar="N", help="print the N best outputs per input as OUTPUT<TAB>SCORE")
    tr.add_argument("--sample", action="store_true", default=None, help="sample outputs instead of searching")
    tr.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    tr.add_argument("--top-k", type=int, metavar="K", help="sample from the K most probable tokens (0: all)")
    tr.add_argument("--top-p", type=float, metavar="P", help="sample from the smallest set of probability P")
    tr.add_argument("--plot-attention", metavar="DIR", help="write an attention heatmap per input: DIR/0001.png ...")
    tr.add_argument("--attention-layer", type=int, metavar="N", help="with --plot-attention: which decoder layer's attention to plot (Transformer)")
    tr.set_defaults(fn=cmd_translate)

    ev = sub.add_parser("evaluate", help="score a model, or a file of outputs, against references")
    model_args(ev, False)
    ev.add_argument("--src", help="source file (text with --ref, or one TSV/JSONL file)")
    ev.add_argument("--ref", help="reference file, line-aligned")
    ev.add_argument("--hyp", help="outputs to score instead of running a model")
    ev.add_argument("--metrics", nargs="+", choices=["bleu", "chrf", "wer", "per", "exact"])
    ev.add_argument("--group-by-source", action=argparse.BooleanOptionalAction, default=None,
                    help="identical sources count once, their targets as alternative references")
    ev.add_argument("--examples", type=int, default=0, help="show N example predictions")
    search_args(ev)
    ev.set_defaults(fn=cmd_evaluate)

    cd = sub.add_parser("check-data", help="validate a corpus and print its statistics")
    cd.add_argument("src", help="source file, or one TSV/JSONL file")
    cd.add_argument("tgt", nargs="?", help="target file, line-aligned with src")
    cd.add_argument("--format", default="auto", choices=["auto", "text", "tsv", "jsonl"])
    cd.set_defaults(fn=cmd_check_data)

    pr = sub.add_parser("prepare", help="write a built-in data set's splits to files")
    pr.add_argument("dataset", choices=["cmudict"])
    pr.add_argument("out_dir", nargs="?", help="where to write train/dev/test.tsv (default: the cache)")
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

    de = sub.add_parser("demo", help="train and evaluate the embedded G2P task (quick config)")
    de.add_argument("--output-dir", default="runs/demo")
    de.add_argument("--retrain", action="store_true", help="delete an earlier demo model first")
    de.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    de.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return args.fn(args)
    except (UserError, DataError) as e:
        if args.debug:
            raise
        print(f"s2s: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("s2s: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `s2s translate ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
