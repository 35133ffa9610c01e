"""The model section is a union on ``model.family``: each family has only its own keys, a key of
another family is refused naming it, and model directories saved when every family's keys were
in every config still load."""

from __future__ import annotations

from pathlib import Path

import pytest

from seq2seqkit.cli import main
from seq2seqkit.config import AttentionConfig, RNNConfig, TransformerConfig, load_config
from seq2seqkit.errors import ConfigError
from seq2seqkit.training import Trainer, load_for_resume
from seq2seqkit.translate import Translator

from conftest import one_line_error, tiny_config, tiny_model


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error(path: Path | None, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def test_family_picks_the_class_and_defaults_to_rnn(tmp_path: Path):
    assert type(load_config(None).model) is RNNConfig
    assert type(load_config(write(tmp_path / "c.yaml", "model:\n  hidden_size: 64\n")).model) is RNNConfig
    assert type(load_config(None, ["model.family=attention"]).model) is AttentionConfig
    assert type(load_config(None, ["model.family=transformer"]).model) is TransformerConfig
    assert error(None, "model.family=cnn") == "override 'model.family=cnn': Input should be 'rnn', 'attention' or 'transformer'"
    assert error(None, "model=3") == "override 'model=3': Input should be a valid dictionary (the keys of the model section)"


def test_a_transformer_key_in_an_rnn_config_is_refused_naming_it(tmp_path: Path, capsys):
    path = write(tmp_path / "rnn.yaml", "model:\n  family: rnn\n  hidden_size: 64\n  heads: 4\n")
    assert error(path) == f"{path}: model.heads: not a key of family 'rnn' (only of family 'transformer')"
    assert error(None, "model.heads=4") == "override 'model.heads=4': not a key of family 'rnn' (only of family 'transformer')"
    # the attention RNN has the RNN keys, but not the Transformer's
    assert error(None, "model.family=attention", "model.ff_dim=64").startswith("override 'model.ff_dim=64': not a key")
    assert main(["train", str(path)]) == 2  # one line on stderr, exit 2, as every config error
    assert one_line_error(capsys) == f"s2s: error: {path}: model.heads: not a key of family 'rnn' (only of family 'transformer')"


def test_an_rnn_key_in_a_transformer_config_is_refused_naming_it(tmp_path: Path):
    path = write(tmp_path / "tf.yaml", "model:\n  family: transformer\n  heads: 4\n  cell: lstm\n")
    assert error(path) == f"{path}: model.cell: not a key of family 'transformer' (only of families 'rnn' and 'attention')"
    assert error(None, "model.family=transformer", "model.feed_context=false") == \
        "override 'model.feed_context=false': not a key of family 'transformer' (only of family 'rnn')"
    # a key of no family is an unknown key, with a suggestion from the family's own keys
    assert error(None, "model.family=transformer", "model.head=2") == \
        "override 'model.head=2': unknown key (did you mean model.heads?)"


def test_an_override_switches_the_family(tmp_path: Path):
    path = write(tmp_path / "c.yaml", "model:\n  embed_dim: 64\n  dropout: 0.1\n  tie_embeddings: true\n")
    m = load_config(path, ["model.family=transformer", "model.heads=4"]).model
    assert isinstance(m, TransformerConfig) and (m.heads, m.embed_dim, m.dropout, m.tie_embeddings) == (4, 64, 0.1, True)
    # the check of the family's own keys runs on the switched section
    assert error(path, "model.family=transformer", "model.heads=5") == \
        "override 'model.heads=5': 5 heads do not divide model.embed_dim 64 (each head gets embed_dim / heads dimensions)"
    # switching away from a family whose own keys the file sets names both the key and the override
    rnn = write(tmp_path / "rnn.yaml", "model:\n  family: rnn\n  hidden_size: 64\n")
    assert error(rnn, "model.family=transformer") == \
        "override 'model.family=transformer': model.hidden_size: not a key of family 'transformer' " \
        "(only of families 'rnn' and 'attention')"
    # the whole section can be replaced by one override
    assert load_config(rnn, ["model={family: transformer, heads: 2}"]).model.heads == 2


# The model section of a config.yaml written before each family had its own class: every key of
# every family, as the old dump_config wrote it (a Transformer's values for its own keys).
OLD_FLAT_TRANSFORMER = """model:
  family: transformer
  cell: gru
  embed_dim: 32
  hidden_size: 512
  encoder_layers: 1
  decoder_layers: 1
  bidirectional: true
  dropout: 0.0
  feed_context: true
  tie_embeddings: false
  share_embeddings: false
  attention: bahdanau
  input_feeding: true
  heads: 2
  ff_dim: 64
  norm: pre
  positions: sinusoidal
  max_positions: 1024
  attention_dropout: 0.1
  copy_attn: false
  coverage: false
  coverage_feature: false
"""


def test_a_model_directory_with_an_old_flat_config_loads(tmp_path: Path, capsys):
    cfg = tiny_config(tmp_path, max_steps=1)
    cfg.model = tiny_model("transformer", heads=2, ff_dim=64, encoder_layers=1, decoder_layers=1)
    Trainer(cfg).save("last")  # a model directory: config.yaml, tokenizers, a checkpoint
    saved = Path(cfg.output_dir) / "config.yaml"
    text = saved.read_text(encoding="utf-8")
    start, end = text.index("model:\n"), text.index("training:\n")
    assert "  cell:" not in text[start:end]  # what is written now: the family's own keys
    saved.write_text(text[:start] + OLD_FLAT_TRANSFORMER + text[end:], encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model\.cell: not a key of family 'transformer'"):
        load_config(saved)  # as a user's config file, it would be refused

    tr = Translator.load(cfg.output_dir, checkpoint="last")
    assert tr.cfg.model == cfg.model
    assert len(tr.translate(["a b c"])) == 1
    assert load_for_resume(cfg.output_dir, ["training.max_steps=2"]).model == cfg.model
    inputs = write(tmp_path / "in.txt", "a b\nc d e\n")
    out = tmp_path / "out.txt"
    assert main(["-q", "generate", "-m", cfg.output_dir, "--checkpoint", "last", "-i", str(inputs), "-o", str(out)]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2

    # a key of no family is still refused in a saved config
    saved.write_text(text[:start] + OLD_FLAT_TRANSFORMER + "  hedas: 2\n" + text[end:], encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model\.hedas: unknown key"):
        Translator.load(cfg.output_dir, checkpoint="last")
