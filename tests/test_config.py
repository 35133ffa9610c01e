"""Tests for seq2seqkit.config: defaults, YAML + overrides, error messages naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from seq2seqkit.config import (
    Config,
    apply_overrides,
    dump_config,
    from_dict,
    load_config,
    parse_override,
)
from seq2seqkit.errors import ConfigError, UserError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(fn, *args) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    assert isinstance(info.value, UserError)
    return str(info.value)


# --- defaults ---------------------------------------------------------------------------

def test_defaults_validate():
    cfg = Config()
    assert Config.model_validate(cfg.model_dump()) == cfg
    assert load_config(None) == cfg
    assert cfg.training.epochs == 10
    assert cfg.training.teacher_forcing.ratio == 1.0
    assert cfg.tokenizer.src.kind == "sentencepiece"
    assert cfg.evaluation.metrics == ["bleu", "chrf"]
    assert cfg.data.train.is_set is False


def test_empty_yaml_file_is_defaults(tmp_path: Path):
    assert load_config(write(tmp_path / "c.yaml", "")) == Config()


# --- loading + overrides ----------------------------------------------------------------

def test_load_yaml_with_overrides(tmp_path: Path):
    path = write(tmp_path / "c.yaml", (
        "name: test\n"
        "training:\n"
        "  epochs: 7\n"
        "  lr: 0.01\n"
        "model:\n"
        "  cell: lstm\n"
    ))
    cfg = load_config(path, [
        "training.epochs=2",
        "data.train.src=a.txt", "data.train.tgt=b.txt",
        "evaluation.metrics=[wer, per]",
        "model.bidirectional=false",
        "training.lr=5e-4",
        "training.teacher_forcing.ratio=0.25",
        "training.betas=[0.8, 0.95]",
    ])
    assert cfg.name == "test"
    assert cfg.model.cell == "lstm"  # from the file, untouched by overrides
    assert cfg.training.epochs == 2  # override wins over the file
    assert cfg.data.train.src == "a.txt" and cfg.data.train.tgt == "b.txt"
    assert cfg.data.train.files() == ("a.txt", "b.txt")
    assert cfg.evaluation.metrics == ["wer", "per"]
    assert cfg.model.bidirectional is False
    assert cfg.training.lr == 0.0005
    assert cfg.training.teacher_forcing.ratio == 0.25
    assert cfg.training.betas == (0.8, 0.95)


def test_parse_override_values():
    assert parse_override("training.epochs=2") == (["training", "epochs"], 2)
    assert parse_override("model.bidirectional=true") == (["model", "bidirectional"], True)
    assert parse_override("training.lr=0.5") == (["training", "lr"], 0.5)
    assert parse_override("evaluation.metrics=[bleu]") == (["evaluation", "metrics"], ["bleu"])
    assert parse_override("training.max_steps=") == (["training", "max_steps"], None)
    assert parse_override("name=a=b") == (["name"], "a=b")


def test_apply_overrides_creates_sections():
    raw = apply_overrides({"training": {"lr": 1.0}}, ["training.epochs=3", "data.train.path=x.tsv"])
    assert raw == {"training": {"lr": 1.0, "epochs": 3}, "data": {"train": {"path": "x.tsv"}}}


def test_override_into_a_scalar_is_rejected():
    msg = config_error(apply_overrides, {"training": 5}, ["training.epochs=3"])
    assert "'training' is not a section" in msg


def test_override_without_equals():
    msg = config_error(load_config, None, ["training.epochs"])
    assert msg == "override 'training.epochs': expected key=value, e.g. training.epochs=2"


def test_override_empty_segment():
    msg = config_error(load_config, None, ["training..epochs=2"])
    assert "empty key segment" in msg


# --- errors name the dotted key ---------------------------------------------------------

def test_unknown_key_override():
    msg = config_error(load_config, None, ["training.epoch=3"])
    assert msg == "override 'training.epoch=3': unknown key (did you mean training.epochs?)"


def test_unknown_key_in_file_names_file(tmp_path: Path):
    path = write(tmp_path / "c.yaml", "model:\n  hidden: 10\n")
    msg = config_error(load_config, path)
    assert msg == f"{path}: model.hidden: unknown key (did you mean model.hidden_size?)"


def test_unknown_top_level_section():
    msg = config_error(from_dict, {"trainer": {}})
    assert msg == "config: trainer: unknown key (did you mean training?)"


def test_wrong_type():
    msg = config_error(load_config, None, ["training.epochs=abc"])
    assert msg.startswith("override 'training.epochs=abc': ")
    assert "integer" in msg


def test_out_of_range():
    msg = config_error(load_config, None, ["training.teacher_forcing.ratio=1.5"])
    assert msg.startswith("override 'training.teacher_forcing.ratio=1.5': ")
    assert "less than or equal to 1" in msg
    msg = config_error(from_dict, {"training": {"epochs": 0}})
    assert msg.startswith("config: training.epochs: ")
    assert "greater than or equal to 1" in msg


def test_bad_literal():
    msg = config_error(from_dict, {"model": {"cell": "rnn"}})
    assert msg.startswith("config: model.cell: ")
    assert "'gru' or 'lstm'" in msg
    msg = config_error(from_dict, {"evaluation": {"metrics": ["bleu", "meteor"]}})
    assert msg.startswith("config: evaluation.metrics.1: ")


def test_several_errors_counted():
    msg = config_error(from_dict, {"training": {"epochs": 0, "batch_tokens": 0}})
    assert msg.startswith("config: training.epochs: ")
    assert msg.endswith("(and 1 more)")


def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    path = write(tmp_path / "bad.yaml", "training:\n  epochs: 3\n    lr: 1\n")
    msg = config_error(load_config, path)
    assert msg.startswith(f"{path}:3: invalid YAML")


def test_yaml_top_level_not_mapping(tmp_path: Path):
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    msg = config_error(load_config, path)
    assert msg == f"{path}: top level must be a mapping of sections"


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    msg = config_error(load_config, path)
    assert msg == f"{path}: no such config file"


def test_corpus_path_and_src_rejected():
    msg = config_error(from_dict, {"data": {"train": {"path": "x.tsv", "src": "a.txt", "tgt": "b.txt"}}})
    assert msg.startswith("config: data.train: ")
    assert "not both" in msg


def test_corpus_src_without_tgt_rejected():
    msg = config_error(load_config, None, ["data.dev.src=a.txt"])
    assert msg.startswith("override 'data.dev.src=a.txt': data.dev: ")
    assert "'src' and 'tgt' must be given together" in msg


def test_corpus_path_alone_ok():
    cfg = load_config(None, ["data.test.path=t.jsonl"])
    assert cfg.data.test.files() == ("t.jsonl", None)
    assert cfg.data.test.is_set is True


def test_joint_with_different_kinds_rejected():
    msg = config_error(from_dict, {"tokenizer": {"joint": True, "src": {"kind": "char"}}})
    assert msg.startswith("config: tokenizer.joint: ")
    assert "same tokenizer kind" in msg
    cfg = load_config(None, ["tokenizer.joint=true", "tokenizer.src.kind=char", "tokenizer.tgt.kind=char"])
    assert cfg.tokenizer.joint is True


def test_assignment_is_validated():
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.training.epochs = 0
    assert cfg.training.epochs == 10


# --- dump -------------------------------------------------------------------------------

def test_dump_load_round_trip(tmp_path: Path):
    cfg = load_config(None, [
        "name=rt", "training.epochs=3", "training.max_steps=100", "data.train.path=tr.tsv",
        "model.cell=lstm", "training.betas=[0.8, 0.9]", "evaluation.metrics=[wer]",
        "tokenizer.src.kind=char", "tokenizer.src.max_vocab=50",
    ])
    text = dump_config(cfg)
    assert "name: rt\n" in text
    again = load_config(write(tmp_path / "dump.yaml", text))
    assert again == cfg
    assert again.training.betas == (0.8, 0.9)
    assert again.training.max_steps == 100
    assert dump_config(again) == text


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "seq2seqkit" / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_configs_validate_and_build(path):
    """Every config in configs/ loads, and its model builds (tiny vocabularies)."""
    from seq2seqkit.models import build_model

    cfg = load_config(path)
    assert cfg.model.family in path.stem or cfg.model.family == "rnn"
    model = build_model(cfg.model, 40, 40)
    assert model.num_parameters() > 0
