"""The command line and the Python API on one small trained model."""

from __future__ import annotations

import os

import subprocess
import sys
from pathlib import Path

import pytest

import seq2seqkit
from seq2seqkit.cli import main
from seq2seqkit.config import dump_config

from conftest import tiny_config, write_reverse_task


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tiny_config(tmp, max_steps=5)
    cfg_file = tmp / "tiny.yaml"
    cfg_file.write_text(dump_config(cfg))
    # Overrides on the command line win over the file (here: more steps, a new output dir).
    out = tmp / "overridden"
    assert main(["-q", "train", str(cfg_file), "training.max_steps=60", f"output_dir={out}"]) == 0
    return out


def test_train_writes_a_self_contained_model_dir(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.yaml", "tokenizers.json", "src.vocab.json", "tgt.vocab.json", "checkpoints", "train_log.jsonl"} <= names
    assert "max_steps: 60" in (model_dir / "config.yaml").read_text()


def test_translate_stdin_to_stdout_matches_python_api(model_dir):
    lines = ["a b c", "d e", "f a b c d"]
    proc = subprocess.run(
        [sys.executable, "-m", "seq2seqkit.cli", "-q", "translate", "-m", str(model_dir)],
        input="\n".join(lines) + "\n", capture_output=True, text=True, check=True,
    )
    outputs = proc.stdout.splitlines()
    assert len(outputs) == 3
    assert outputs == seq2seqkit.load(str(model_dir)).translate(lines)


def test_translate_file_to_file_and_streaming(model_dir, tmp_path):
    src, _ = write_reverse_task(tmp_path, 50, seed=9)
    out = tmp_path / "out" / "hyp.txt"
    assert main(["-q", "translate", "-m", str(model_dir), "-i", str(src), "-o", str(out)]) == 0
    hyps = out.read_text().splitlines()
    assert len(hyps) == 50
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    tr = seq2seqkit.load(str(model_dir))
    lines = src.read_text().splitlines()
    assert list(tr.translate_stream(lines, chunk=7)) == hyps == tr.translate(lines)


def test_evaluate_model_and_hypothesis_file(model_dir, tmp_path, capsys):
    src, ref = write_reverse_task(tmp_path, 40, seed=10)
    assert main(["-q", "evaluate", "-m", str(model_dir), "--src", str(src), "--ref", str(ref),
                 "--metrics", "exact", "bleu", "--examples", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("exact ") and "BLEU" in out and "BLEU signature: nrefs:1" in out
    assert len([x for x in out.splitlines() if x.startswith("  ")]) == 3
    # Scoring the references against themselves: perfect.
    assert main(["-q", "evaluate", "--hyp", str(ref), "--ref", str(ref), "--metrics", "exact", "per"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "exact 100.00% | PER 0.00%"


def test_resume_cli_with_override(model_dir, tmp_path, capsys):
    """The overrides given at --resume are the run's from then on: config.yaml records them, so a
    later plain --resume (after a crash, say) trains to the same limit, not the first one."""
    import json

    before = (model_dir / "config.yaml").read_bytes()
    assert main(["-q", "train", "--resume", str(model_dir)]) == 0  # done, no overrides: the file is untouched
    assert (model_dir / "config.yaml").read_bytes() == before and b"max_steps: 70" not in before
    assert main(["-q", "train", "--resume", str(model_dir), "training.max_steps=70"]) == 0
    assert "max_steps: 70" in (model_dir / "config.yaml").read_text()
    steps = [json.loads(x)["step"] for x in (model_dir / "train_log.jsonl").read_text().splitlines()]
    assert max(steps) == 70
    assert main(["-q", "train", "--resume", str(model_dir)]) == 0  # done at 70: nothing more
    assert max(json.loads(x)["step"] for x in (model_dir / "train_log.jsonl").read_text().splitlines()) == 70


def test_check_data_clean_corpus(tmp_path, capsys):
    src, tgt = write_reverse_task(tmp_path, 25, seed=4)
    assert main(["check-data", str(src), str(tgt)]) == 0
    assert "25" in capsys.readouterr().out


def test_translate_beam_nbest_prints_scored_lines(model_dir, tmp_path, capsys):
    lines = ["a b c", "d e", "f a b c d"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    assert main(["-q", "translate", "-m", str(model_dir), "-i", str(src), "--beam", "3", "--nbest", "2",
                 "--length-penalty", "0.6"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 * len(lines)
    rows = [line.split("\t") for line in out]
    assert all(len(r) == 2 for r in rows)
    scores = [float(score) for _, score in rows]
    for i in range(len(lines)):
        first, second = rows[2 * i], rows[2 * i + 1]
        assert first[0] != second[0] and scores[2 * i] >= scores[2 * i + 1]
    # The same through the Python API.
    tr = seqkit_with_search(model_dir, beam_size=3, nbest=2, length_penalty=0.6)
    assert [[text for text, _ in n] for n in tr.nbest(lines)] == [[r[0] for r in rows[i : i + 2]] for i in (0, 2, 4)]
    assert main(["-q", "evaluate", "-m", str(model_dir), "--src", str(src), "--ref", str(src), "--metrics", "exact",
                 "--beam", "3", "--length-penalty", "0.6"]) == 0
    assert capsys.readouterr().out.startswith("exact ")


def seqkit_with_search(model_dir, **search):
    tr = seq2seqkit.load(str(model_dir))
    tr.cfg.search = tr.cfg.search.model_copy(update=search)
    return tr


def test_translate_bad_search_flags_and_plots_without_attention(model_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a b c\n")
    plots = tmp_path / "plots"
    # A plain encoder-decoder has no attention: it still translates, says why there are no plots.
    assert main(["translate", "-m", str(model_dir), "-i", str(src), "--beam", "5", "--plot-attention", str(plots)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1
    assert "model family 'rnn' has no attention: no heatmaps written" in err
    for flags, message in [(["--beam", "0"], "--beam: "),
                           (["--beam", "2", "--nbest", "3"], "--nbest: 3 best outputs asked for, but beam search keeps only beam_size=2")]:
        assert main(["-q", "translate", "-m", str(model_dir), "-i", str(src), *flags]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "Traceback" not in err
        assert len(err.splitlines()) == 1 and err.startswith("s2s: error: ") and message in err, err
    assert not plots.exists() or not list(plots.iterdir())


def test_translate_plots_attention_of_a_model_that_has_it(model_dir, tmp_path, monkeypatch, capsys):
    """The RNN wrapped with made-up attention (two layers' worth), kept only when asked for."""
    from seq2seqkit.translate import Translator
    from test_search import ToyAttention

    load, wrapped = Translator.load, []

    def load_with_attention(*args, **kwargs):
        tr = load(*args, **kwargs)
        tr.model = ToyAttention(tr.model, layers=2).eval()
        wrapped.append(tr.model)
        return tr

    monkeypatch.setattr(Translator, "load", load_with_attention)
    src = tmp_path / "in.txt"
    src.write_text("a b c\nd e\n\n")
    plots = tmp_path / "plots"
    assert main(["-q", "translate", "-m", str(model_dir), "-i", str(src), "--beam", "2",
                 "--plot-attention", str(plots), "--attention-layer", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert set(wrapped[0].asked) == {1}
    assert sorted(p.name for p in plots.glob("*.png")) == ["0001.png", "0002.png", "0003.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots.glob("*.png"))
    # The same directory again: the toolkit's own earlier plots are replaced by this run's alone.
    src.write_text("a b c\n")
    assert main(["-q", "translate", "-m", str(model_dir), "-i", str(src), "--plot-attention", str(plots)]) == 0
    assert sorted(p.name for p in plots.glob("*.png")) == ["0001.png"]
    # A directory holding a file the toolkit did not write there is refused, the file untouched.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "0001.png").write_bytes(b"a user's picture")
    capsys.readouterr()
    assert main(["-q", "translate", "-m", str(model_dir), "-i", str(src), "--plot-attention", str(mine)]) == 2
    assert capsys.readouterr().err == (f"s2s: error: --plot-attention {mine}: holds files seq2seq-kit did not write "
                                       f"there (0001.png); give a new or empty directory\n")
    assert (mine / "0001.png").read_bytes() == b"a user's picture" and sorted(os.listdir(mine)) == ["0001.png"]


def test_beam_never_scores_below_greedy_on_a_trained_model(model_dir):
    """On a trained model, beam search (ranking by raw model score) never returns a worse
    score than greedy on the same input. (On untrained models it can: greedy's prefix may
    fall out of a narrow beam. tests/test_search.py covers that case and exhaustive search.)"""
    from seq2seqkit.data.dataset import pad_sources
    from seq2seqkit.search import beam_search, greedy_search

    tr = seq2seqkit.load(str(model_dir))
    src_file, _ = write_reverse_task(model_dir.parent / "beam-vs-greedy", 60, seed=21)
    sources = [tr.src_tok.encode(line) for line in src_file.read_text().splitlines()]
    src, lens = pad_sources(sources)
    greedy = greedy_search(tr.model, src, lens)
    for k in (2, 5):
        beams = beam_search(tr.model, src, lens, k, length_penalty=0.0)
        for g, b in zip(greedy, beams):
            assert b[0].score >= g.score - 1e-6
