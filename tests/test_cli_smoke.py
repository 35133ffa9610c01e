"""The command line and the Python API on one small trained model."""

from __future__ import annotations

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
    assert main(["-q", "train", "--resume", str(model_dir), "training.max_steps=70"]) == 0
    assert "max_steps: 70" not in (model_dir / "config.yaml").read_text()  # the saved config is the original
    import json

    steps = [json.loads(x)["step"] for x in (model_dir / "train_log.jsonl").read_text().splitlines()]
    assert max(steps) == 70


def test_check_data_clean_corpus(tmp_path, capsys):
    src, tgt = write_reverse_task(tmp_path, 25, seed=4)
    assert main(["check-data", str(src), str(tgt)]) == 0
    assert "25" in capsys.readouterr().out
