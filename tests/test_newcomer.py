"""What a new user meets first: one answer from both evaluate paths, progress that counts
right, a readable Translator, and the Python API's log on screen."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import seq2seqkit
from seq2seqkit.cli import main
from seq2seqkit.config import CorpusConfig, dump_config
from seq2seqkit.data.dataset import token_batches
from seq2seqkit.training import Trainer, load_for_resume

from conftest import tiny_config, write_reverse_task

METRICS = ["--metrics", "wer", "per", "exact", "chrf"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model trained to the end of its 2 epochs, with a test split (for `s2s demo`)."""
    tmp = tmp_path_factory.mktemp("newcomer")
    cfg = tiny_config(tmp, epochs=2, batch_tokens=2000, exposure_bias=False, num_threads=1)
    cfg.data.dev_max_examples = 50
    src, tgt = write_reverse_task(tmp / "test", 30, seed=4)
    rows = zip(src.read_text().splitlines(), tgt.read_text().splitlines())
    (tmp / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in rows))
    cfg.data.test = CorpusConfig(path=str(tmp / "test.tsv"))
    Trainer(cfg).train()
    return Path(cfg.output_dir)


@pytest.fixture(scope="module")
def g2p_like(model_dir, tmp_path_factory) -> dict[str, Path]:
    """An evaluation set whose sources repeat with alternative references, the way a G2P test
    file lists a word once per pronunciation: half the words get the model's own output as one
    alternative (so grouping changes the score), and rows of one word are not adjacent."""
    tmp = tmp_path_factory.mktemp("g2p_like")
    words = [" ".join(w) for w in ["abc", "fed", "ab", "cafe", "bead", "dab", "face", "ace", "bad", "ef"]]
    outputs = seq2seqkit.load(str(model_dir)).translate(words)
    rows = [(w, " ".join(reversed(w.split()))) for w in words]
    rows += [(w, o) for w, o in zip(words[::2], outputs[::2])] + [(w, "z z") for w in words[1::4]]
    (tmp / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in rows))
    (tmp / "words.txt").write_text("".join(s + "\n" for s, _ in rows))
    (tmp / "phonemes.txt").write_text("".join(t + "\n" for _, t in rows))
    (tmp / "unique.txt").write_text("".join(w + "\n" for w in words))
    return {name: tmp / name for name in ("test.tsv", "words.txt", "phonemes.txt", "unique.txt")}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def scores_of(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


# ------------------------------------------------------------------------------ evaluate
def test_both_evaluate_paths_give_the_same_numbers(model_dir, g2p_like, tmp_path, capsys):
    data = g2p_like
    by_model = scores_of(capsys, "evaluate", "-m", str(model_dir), "--src", str(data["test.tsv"]),
                         "--group-by-source", *METRICS)
    # The outputs as a user makes them: `s2s translate` on every row's source, or on each word once.
    per_row, per_word = tmp_path / "per_row.txt", tmp_path / "per_word.txt"
    assert main(["-q", "translate", "-m", str(model_dir), "-i", str(data["words.txt"]), "-o", str(per_row)]) == 0
    assert main(["-q", "translate", "-m", str(model_dir), "-i", str(data["unique.txt"]), "-o", str(per_word)]) == 0
    for hyp in (per_row, per_word):
        for refs in (["--src", str(data["test.tsv"])], ["--src", str(data["words.txt"]), "--ref", str(data["phonemes.txt"])]):
            assert scores_of(capsys, "evaluate", "--hyp", str(hyp), *refs, "--group-by-source", *METRICS) == by_model
    assert "nrefs:var" in by_model  # grouped: several references per word

    # Row by row, both ways agree too, and the number is another one (grouping mattered here).
    ungrouped = scores_of(capsys, "evaluate", "-m", str(model_dir), "--src", str(data["test.tsv"]),
                          "--no-group-by-source", *METRICS)
    assert scores_of(capsys, "evaluate", "--hyp", str(per_row), "--ref", str(data["phonemes.txt"]), *METRICS) == ungrouped
    assert ungrouped.splitlines()[0] != by_model.splitlines()[0]


def test_grouping_a_hypothesis_file_needs_the_sources(model_dir, g2p_like, tmp_path, capsys):
    hyp = tmp_path / "hyp.txt"
    hyp.write_text(g2p_like["phonemes.txt"].read_text())
    code, out, err = run(capsys, "evaluate", "--hyp", str(hyp), "--ref", str(g2p_like["phonemes.txt"]), "--group-by-source")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("s2s: error: --group-by-source: needs the sources") and "--src" in err


def test_hypothesis_line_count_must_match_rows_or_distinct_sources(g2p_like, tmp_path, capsys):
    tsv = str(g2p_like["test.tsv"])
    n_rows = len(g2p_like["words.txt"].read_text().splitlines())
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("a\n" * (n_rows - 1))
    code, _, err = run(capsys, "evaluate", "--hyp", str(hyp), "--src", tsv, "--group-by-source")
    assert code == 2
    assert f"has {n_rows - 1} lines but {tsv} has {n_rows} rows (10 distinct sources): give one output per row" in err
    code, _, err = run(capsys, "evaluate", "--hyp", str(hyp), "--src", tsv)
    assert code == 2 and f"has {n_rows} rows: give one output per row\n" in err
    # One output per word but no grouping asked for: the error says what would take it.
    code, _, err = run(capsys, "evaluate", "--hyp", str(g2p_like["unique.txt"]), "--src", tsv)
    assert code == 2 and "(10 is its number of distinct sources: to score one output per source, add --group-by-source)" in err


def test_rows_of_one_source_must_agree_when_grouped(g2p_like, tmp_path, capsys):
    rows = g2p_like["words.txt"].read_text().splitlines()
    outputs = [f"out {w}" for w in rows]
    later = rows.index(rows[0], 1)  # the second row of the first word
    outputs[later] = "something else"
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("".join(o + "\n" for o in outputs))
    code, _, err = run(capsys, "evaluate", "--hyp", str(hyp), "--src", str(g2p_like["test.tsv"]), "--group-by-source")
    assert code == 2 and err.startswith(f"s2s: error: {hyp}:{later + 1}: output 'something else' differs from line 1's")


def test_repeated_sources_scored_row_by_row_are_pointed_out(g2p_like, capsys):
    rows = g2p_like["words.txt"].read_text().splitlines()
    code, _, err = run(capsys, "evaluate", "--hyp", str(g2p_like["phonemes.txt"]), "--src", str(g2p_like["test.tsv"]))
    assert code == 0 and f"s2s: note: {len(rows) - len(set(rows))} rows repeat an earlier row's source" in err
    code, _, err = run(capsys, "evaluate", "--hyp", str(g2p_like["phonemes.txt"]), "--src", str(g2p_like["test.tsv"]),
                       "--no-group-by-source")
    assert code == 0 and err == ""


def test_hyp_and_model_together_are_refused(model_dir, g2p_like, capsys):
    code, _, err = run(capsys, "evaluate", "-m", str(model_dir), "--hyp", str(g2p_like["phonemes.txt"]),
                       "--src", str(g2p_like["test.tsv"]))
    assert code == 2 and "--hyp" in err and "-m" in err


# ------------------------------------------------------------------------------ progress
def test_training_log_counts_steps_up_to_max_steps(tmp_path, caplog):
    cfg = tiny_config(tmp_path, max_steps=6, log_every=3, epochs=2, exposure_bias=False, num_threads=1)
    cfg.data.dev_max_examples = 20
    trainer = Trainer(cfg)
    per_epoch = len(token_batches(trainer.train_data.src_lens, trainer.train_data.tgt_lens, 400, 1234))
    assert per_epoch > 6  # so max_steps, not the epochs, ends this run
    assert trainer.planned_steps() == 6
    with caplog.at_level(logging.INFO, logger="seq2seqkit"):
        trainer.train()
    text = caplog.text
    assert "training: 6 steps planned (2 epochs, max_steps 6); memory allocator: " in text
    assert re.search(r"step 3/6 \(epoch 1/2\) \| loss .* \| ETA \d\d:\d\d", text)
    assert re.search(r"step 6/6 \(epoch 1/2\) .* \| ETA 00:00", text)
    # Without max_steps the plan is every epoch's batches.
    trainer.cfg.training.max_steps = None
    assert trainer.planned_steps() == 2 * per_epoch
    # Resumed with a raised limit: where it stands, in the epochs a person counts.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seq2seqkit"):
        Trainer(load_for_resume(cfg.output_dir, ["training.max_steps=8", "training.log_every=1"]), resume=True).train()
    assert "resumed at step 6, epoch 1/2 (batch 6)" in caplog.text
    assert "training: 8 steps planned (2 epochs, max_steps 8), from step 6, epoch 1/2 (batch 6)" in caplog.text
    assert re.search(r"step 7/8 \(epoch 1/2\) .* \| ETA \d\d:\d\d", caplog.text)


def test_demo_reports_a_finished_run_with_its_epochs(model_dir, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="seq2seqkit"):
        code, out, _ = run(capsys, "demo", "--output-dir", str(model_dir))
    assert code == 0
    assert f"{model_dir} already holds the trained demo model (step " in out
    assert re.search(r"\(step \d+, 2/2 epochs done\); pass --retrain", out)
    assert re.search(r"resumed at step \d+, 2/2 epochs done", caplog.text)
    assert "epoch 3" not in out + caplog.text
    assert re.search(r"G2P test split \(\d+ words\)", out)


def test_translator_repr(model_dir):
    tr = seq2seqkit.load(str(model_dir))
    n = tr.model.num_parameters()
    assert repr(tr) == (f"Translator(family=rnn, parameters={n:,}, source vocabulary={tr.src_tok.vocab_size} (word), "
                        f"target vocabulary={tr.tgt_tok.vocab_size} (word), device=cpu)")
    pair = seq2seqkit.load([str(model_dir), str(model_dir)])
    assert f"family=ensemble of rnn + rnn, parameters={2 * n:,}," in repr(pair)


def test_translate_to_file_ends_with_a_summary(model_dir, tmp_path, capsys):
    src, _ = write_reverse_task(tmp_path, 7, seed=5)
    out = tmp_path / "hyp.txt"
    code, stdout, err = run(capsys, "translate", "-m", str(model_dir), "-i", str(src), "-o", str(out))
    assert code == 0 and stdout == ""
    assert re.fullmatch(rf"s2s: generated 7 lines in \d+\.\d s \(\d+\.\d lines/s\) -> {re.escape(str(out))}\n", err)
    assert run(capsys, "-q", "translate", "-m", str(model_dir), "-i", str(src), "-o", str(out), "--force")[2] == ""


def test_python_api_logs_what_the_cli_logs_once(tmp_path):
    """In a plain script the log shows on stderr; once the script configures logging itself,
    its configuration alone shows it (no line twice)."""
    cfg = tiny_config(tmp_path, max_steps=2, log_every=1, exposure_bias=False, num_threads=1)
    cfg.data.dev_max_examples = 20
    (tmp_path / "tiny.yaml").write_text(dump_config(cfg))
    script = textwrap.dedent(f"""
        import logging, sys
        import seq2seqkit
        seq2seqkit.train({str(tmp_path / 'tiny.yaml')!r}, ["training.num_threads=1", "output_dir={tmp_path / 'a'}"])
        print("-- configured --", file=sys.stderr)
        logging.basicConfig(level=logging.INFO, format="configured: %(message)s")
        seq2seqkit.train({str(tmp_path / 'tiny.yaml')!r}, ["training.num_threads=1", "output_dir={tmp_path / 'b'}"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plain, configured = (part.splitlines() for part in proc.stderr.split("-- configured --"))
    for wanted in ("vocabulary: ", "step 1/2 ", "step 2/2 ", "validation at step 2: "):
        assert len([x for x in plain if wanted in x]) == 1, proc.stderr
        assert len([x for x in configured if wanted in x and x.startswith("configured: ")]) == 1, proc.stderr
        assert len([x for x in configured if wanted in x]) == 1, proc.stderr
