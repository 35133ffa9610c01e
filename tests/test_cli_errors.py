"""Tests for the ``s2s`` command line: user errors are one line on stderr and exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seqkit.cli import main
from seq2seqkit.errors import ConfigError, DataError, UserError

PREFIX = "s2s: error: "


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """stderr must be exactly one line, the error, with no traceback."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert err.endswith("\n")
    assert lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX):]


# --- bad corpora: each kind -------------------------------------------------------------

def bad_corpora(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (check-data arguments, exact expected message after the prefix)."""
    src = write(tmp_path / "train.src", "a\nb\nc\n")
    tgt = write(tmp_path / "train.tgt", "x\ny\n")
    good = write(tmp_path / "good.tgt", "x\ny\nz\n")
    utf = write(tmp_path / "latin1.src", b"ok\nok\ncaf\xe9\n")
    tsv = write(tmp_path / "rows.tsv", "a\tb\nc\td\ne\tf\tg\n")
    no_tgt = write(tmp_path / "no_tgt.jsonl", '{"src": "a", "tgt": "b"}\n{"src": "c"}\n')
    not_obj = write(tmp_path / "not_obj.jsonl", '{"src": "a", "tgt": "b"}\n\n["c", "d"]\n')
    return {
        "count": ([str(src), str(tgt)],
                  f"{src}: has 3 lines but {tgt} has 2 lines: the files must be line-aligned"),
        "utf8": ([str(utf), str(good)],
                 f"{utf}:3: invalid UTF-8 at byte 3: unexpected end of data (0xe9); "
                 "is the file in another encoding?"),
        "tsv3": ([str(tsv)],
                 f"{tsv}:3: expected 2 tab-separated fields (source, target), found 3"),
        "jsonl_no_tgt": ([str(no_tgt)], f'{no_tgt}:2: missing key "tgt"'),
        "jsonl_not_object": ([str(not_obj)],
                             f'{not_obj}:3: expected a JSON object with "src" and "tgt", found array'),
    }


KINDS = ["count", "utf8", "tsv3", "jsonl_no_tgt", "jsonl_not_object"]


@pytest.mark.parametrize("kind", KINDS)
def test_check_data_bad_input_in_process(tmp_path: Path, capsys, kind):
    args, expected = bad_corpora(tmp_path)[kind]
    code, out, err = run_main(capsys, ["check-data", *args])
    assert code == 2
    assert out == ""
    assert one_error_line(err) == expected


def test_check_data_count_mismatch_other_way(tmp_path: Path, capsys):
    a = write(tmp_path / "a.txt", "1\n")
    b = write(tmp_path / "b.txt", "1\n2\n3\n4\n")
    code, _, err = run_main(capsys, ["check-data", str(a), str(b)])
    assert code == 2
    assert one_error_line(err) == f"{a}: has 1 line but {b} has 4 lines: the files must be line-aligned"


def test_check_data_missing_file(tmp_path: Path, capsys):
    code, _, err = run_main(capsys, ["check-data", str(tmp_path / "nope.tsv")])
    assert code == 2
    assert one_error_line(err) == f"{tmp_path / 'nope.tsv'}: no such file"


def test_check_data_clean(tmp_path: Path, capsys):
    src = write(tmp_path / "c.src", "hello world\nab\n")
    tgt = write(tmp_path / "c.tgt", "bonjour\nx y z\n")
    code, out, err = run_main(capsys, ["check-data", str(src), str(tgt)])
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"{src} + {tgt}: 2 examples"
    assert lines[1] == "  empty source: 0  empty target: 0"
    assert lines[3].split() == ["src", "tokens", "1", "1", "2", "2", "1.5"]
    assert lines[4].split() == ["tgt", "tokens", "1", "1", "3", "3", "2.0"]
    assert lines[5].split() == ["src", "chars", "2", "2", "11", "11", "6.5"]


def test_check_data_clean_jsonl(tmp_path: Path, capsys):
    rows = [{"src": "a b", "tgt": ""}] * 3 + [{"src": "c", "tgt": "d"}]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = run_main(capsys, ["check-data", str(path)])
    assert code == 0
    assert out.splitlines()[:2] == [f"{path}: 4 examples", "  empty source: 0  empty target: 3"]


# --- debug ------------------------------------------------------------------------------

def test_debug_raises(tmp_path: Path, capsys):
    args, expected = bad_corpora(tmp_path)["tsv3"]
    with pytest.raises(DataError) as info:
        main(["--debug", "check-data", *args])
    assert str(info.value) == expected
    assert capsys.readouterr().err == ""


# --- train / translate ------------------------------------------------------------------

def test_train_unknown_key(tmp_path: Path, capsys):
    cfg = write(tmp_path / "c.yaml", "training:\n  epochs: 1\n  learning_rate: 0.1\n")
    code, out, err = run_main(capsys, ["train", str(cfg)])
    assert code == 2
    assert one_error_line(err) == f"{cfg}: training.learning_rate: unknown key"
    assert not (tmp_path / "runs").exists()


def test_train_unknown_key_in_override(tmp_path: Path, capsys):
    cfg = write(tmp_path / "c.yaml", "training:\n  epochs: 1\n")
    code, _, err = run_main(capsys, ["train", str(cfg), "training.epoch=3"])
    assert code == 2
    assert one_error_line(err) == "override 'training.epoch=3': unknown key (did you mean training.epochs?)"


def test_train_unknown_key_debug_raises(tmp_path: Path):
    cfg = write(tmp_path / "c.yaml", "model:\n  layers: 2\n")
    with pytest.raises(ConfigError, match="model.layers: unknown key"):
        main(["--debug", "train", str(cfg)])


def test_train_without_config(capsys):
    code, _, err = run_main(capsys, ["train"])
    assert code == 2
    assert one_error_line(err) == "train: give a CONFIG.yaml (or --resume MODEL_DIR)"


def test_train_resume_empty_dir(tmp_path: Path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_main(capsys, ["train", "--resume", str(empty)])
    assert code == 2
    assert one_error_line(err) == f"{empty}: not a model directory (no config.yaml)"
    assert list(empty.iterdir()) == []  # nothing written into it


def test_train_resume_with_a_config_or_another_output_dir_says_what_resume_takes(tmp_path: Path, capsys):
    """``s2s train CONFIG --resume DIR`` said "override 'CONFIG': expected key=value"; an
    ``output_dir=`` override at resume looked for a run in that other directory ("not a
    seq2seq-kit model directory (nothing to resume)") about a directory the user never resumed."""
    model = tmp_path / "model"
    model.mkdir()
    write(model / "config.yaml", "name: x\n")
    config = write(tmp_path / "c.yaml", "name: x\n")
    code, _, err = run_main(capsys, ["train", str(config), "--resume", str(model)])
    assert code == 2
    assert one_error_line(err).startswith(f"{config}: a resumed run trains with its own {model / 'config.yaml'}; "
                                          f"give a CONFIG.yaml or --resume MODEL_DIR, not both")
    code, _, err = run_main(capsys, ["train", "--resume", str(model), f"output_dir={tmp_path / 'other'}"])
    assert code == 2
    assert one_error_line(err) == (f"override 'output_dir={tmp_path / 'other'}': a resumed run stays in its model "
                                   f"directory ({model}); to continue it elsewhere, copy the directory and resume "
                                   f"the copy")
    assert not (tmp_path / "other").exists()


def test_translate_not_a_model_dir(tmp_path: Path, capsys):
    d = tmp_path / "notmodel"
    d.mkdir()
    write(d / "readme.txt", "hi\n")
    code, out, err = run_main(capsys, ["translate", "-m", str(d), "-i", str(d / "readme.txt")])
    assert code == 2
    assert out == ""
    assert one_error_line(err) == f"{d}: not a model directory (no config.yaml)"


def test_an_input_file_given_as_a_model_is_named_as_such(tmp_path: Path, capsys):
    """`s2s generate -m MODEL_DIR input.txt`: -m takes several directories (an ensemble), so the
    input file lands among them; the error says where an input file goes."""
    write(tmp_path / "input.txt", "hi\n")
    code, out, err = run_main(capsys, ["generate", "-m", str(tmp_path / "input.txt")])
    assert code == 2 and out == ""
    assert one_error_line(err) == (f"{tmp_path / 'input.txt'}: not a model directory (no config.yaml) "
                                   "(a file: an input file goes after -i, or on stdin)")


def test_translate_debug_raises(tmp_path: Path):
    with pytest.raises(UserError, match="not a model directory"):
        main(["--debug", "translate", "-m", str(tmp_path)])


# --- real subprocesses ------------------------------------------------------------------

def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([sys.executable, "-m", "seq2seqkit.cli", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("kind", ["count", "jsonl_not_object"])
def test_check_data_subprocess(tmp_path: Path, kind):
    args, expected = bad_corpora(tmp_path)[kind]
    proc = run_cli(tmp_path, "check-data", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert one_error_line(proc.stderr) == expected


def test_check_data_subprocess_clean(tmp_path: Path):
    write(tmp_path / "ok.tsv", "a b\tc\nd\te f g\n")
    proc = run_cli(tmp_path, "check-data", "ok.tsv")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "ok.tsv: 2 examples"


def test_debug_subprocess_shows_traceback(tmp_path: Path):
    args, expected = bad_corpora(tmp_path)["tsv3"]
    proc = run_cli(tmp_path, "--debug", "check-data", *args)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == f"seq2seqkit.errors.DataError: {expected}"
    assert PREFIX not in proc.stderr


def test_train_unknown_key_subprocess(tmp_path: Path):
    write(tmp_path / "c.yaml", "tokenizer:\n  src:\n    knd: char\n")
    proc = run_cli(tmp_path, "train", "c.yaml")
    assert proc.returncode == 2
    assert one_error_line(proc.stderr) == "c.yaml: tokenizer.src.knd: unknown key (did you mean tokenizer.src.kind?)"
