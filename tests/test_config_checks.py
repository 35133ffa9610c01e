"""Config values are checked as a whole when the config loads, before data is read or a model
is built; every error is one line naming the file (or the override) and the dotted key."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest

from seq2seqkit.cli import apply_search_flags, main
from seq2seqkit.config import Config, from_dict, load_config
from seq2seqkit.errors import ConfigError
from seq2seqkit.training import load_for_resume


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def error(path: Path | None, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


TRANSFORMER = "model:\n  family: transformer\n  embed_dim: 64\n"


# --- the YAML file itself ----------------------------------------------------------------

def test_duplicate_keys_are_refused_with_line_and_key(tmp_path: Path):
    top = write(tmp_path / "top.yaml", "training:\n  epochs: 3\nmodel:\n  cell: lstm\ntraining:\n  lr: 0.1\n")
    assert error(top) == f"{top}:5: invalid YAML (duplicate key 'training' (first given at line 1))"
    nested = write(tmp_path / "nested.yaml", "training:\n  epochs: 3\n  lr: 0.1\n  epochs: 5\n")
    assert error(nested) == f"{nested}:4: invalid YAML (duplicate key 'epochs' (first given at line 2))"
    # the same key in two different mappings, and YAML merge keys overridden, are fine
    ok = write(tmp_path / "ok.yaml", "base: &b {epochs: 2, lr: 0.5}\n")
    ok2 = write(tmp_path / "ok2.yaml", "training:\n  <<: {epochs: 2, lr: 0.5}\n  epochs: 4\nsearch:\n  batch_size: 4\n")
    assert "base: unknown key" in error(ok)
    assert load_config(ok2).training.epochs == 4
    with pytest.raises(ConfigError, match=r"override 'training\.betas=\{a: 1, a: 2\}': value is not valid YAML "
                                          r"\(duplicate key 'a'"):
        load_config(None, ["training.betas={a: 1, a: 2}"])


def test_config_path_that_is_a_directory_or_not_utf8(tmp_path: Path):
    assert error(tmp_path) == f"{tmp_path}: is a directory, not a config file"
    latin1 = write(tmp_path / "c.yaml", "name: x\ntraining:\n  epochs: 2 # caf\xe9\n".encode("latin-1"))
    assert error(latin1) == f"{latin1}:3: not UTF-8 text (byte 0xe9); save the config as UTF-8"
    if Path("/dev/zero").exists():  # endless: read to a limit, not until memory runs out
        assert error(Path("/dev/zero")) == "/dev/zero: over 1 MiB: not a config file"


# --- values that are the wrong kind ------------------------------------------------------

@pytest.mark.parametrize("line, key, shown", [("training:\n  lr: true\n", "training.lr", "true"),
                                              ("training:\n  epochs: yes\n", "training.epochs", "true"),
                                              ("search:\n  length_penalty: off\n", "search.length_penalty", "false"),
                                              ("training:\n  betas: [0.9, on]\n", "training.betas", "a boolean")])
def test_booleans_where_numbers_are_meant(tmp_path: Path, line, key, shown):
    path = write(tmp_path / "c.yaml", line)
    assert error(path) == (f"{path}: {key}: expected a number, got {shown} "
                           f"(YAML reads true/false/yes/no/on/off as booleans)")


def test_booleans_stay_fine_where_booleans_are_meant(tmp_path: Path):
    cfg = load_config(write(tmp_path / "c.yaml", "model:\n  bidirectional: no\nsearch:\n  sample: yes\n  nbest: 2\n"))
    assert cfg.model.bidirectional is False and cfg.search.sample is True
    assert load_config(None, ["training.clip_grad_norm=2"]).training.clip_grad_norm == 2.0  # ints for floats


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN"])
def test_non_finite_numbers_are_refused(tmp_path: Path, value):
    path = write(tmp_path / "c.yaml", f"training:\n  lr: {value}\n")
    assert error(path) == f"{path}: training.lr: Input should be a finite number"
    assert error(None, f"search.max_len_a={value}") == f"override 'search.max_len_a={value}': Input should be a finite number"


# --- combinations that cannot work -------------------------------------------------------

def test_heads_must_divide_embed_dim(tmp_path: Path):
    path = write(tmp_path / "c.yaml", TRANSFORMER + "  heads: 6\n")
    assert error(path) == (f"{path}: model.heads: 6 heads do not divide model.embed_dim 64 "
                           f"(each head gets embed_dim / heads dimensions)")
    assert load_config(path, ["model.heads=8"]).model.heads == 8
    assert error(None, "model.heads=6", "model.embed_dim=64") == \
        "override 'model.heads=6': not a key of family 'rnn' (only of family 'transformer')"  # RNNs have no heads


def test_share_embeddings_needs_a_joint_vocabulary(tmp_path: Path):
    path = write(tmp_path / "c.yaml", TRANSFORMER + "  share_embeddings: true\n")
    assert error(path) == f"{path}: model.share_embeddings: needs one vocabulary for both sides (set tokenizer.joint: true)"
    assert load_config(path, ["tokenizer.joint=true"]).model.share_embeddings is True
    assert error(None, "model.share_embeddings=true", "tokenizer.joint=true") == \
        "override 'model.share_embeddings=true': not a key of family 'rnn' (only of family 'transformer')"


def test_early_stopping_metric_must_be_computed(tmp_path: Path):
    path = write(tmp_path / "c.yaml", "training:\n  early_stopping:\n    metric: bleu\nevaluation:\n  metrics: [wer, per]\n")
    assert error(path) == (f"{path}: training.early_stopping.metric: 'bleu' is not computed at validation (choose "
                           f"from loss, ppl, acc, eb_loss@0.25, eb_gap@0.25, eb_loss@0.5, eb_gap@0.5, eb_loss@1, eb_gap@1, "
                           f"wer, per; evaluation.metrics adds more)")
    assert load_config(path, ["evaluation.metrics=[bleu]"]).training.early_stopping.metric == "bleu"
    assert "'eb_gap@0.5' is not computed" in error(None, "training.early_stopping.metric=eb_gap@0.5",
                                                   "training.exposure_bias=false")
    assert "'eb_gap@0.3' is not computed" in error(None, "training.early_stopping.metric=eb_gap@0.3")
    assert load_config(None, ["training.early_stopping.metric=eb_gap@0.3",
                              "training.exposure_bias_rates=[0.3]"]).training.early_stopping.metric == "eb_gap@0.3"
    assert "'accuracy' is not computed at validation" in error(None, "training.early_stopping.metric=accuracy")
    for metric in ("loss", "ppl", "acc", "eb_loss@1", "eb_gap@0.5", "bleu", "chrf"):
        assert load_config(None, [f"training.early_stopping.metric={metric}"]).training.early_stopping.metric == metric


def test_plateau_with_warmup_is_refused_at_load():
    msg = error(None, "data.dev.path=d.tsv", "training.lr_schedule=plateau", "training.warmup_steps=100")
    assert msg == "override 'training.warmup_steps=100': not supported with lr_schedule=plateau (set it to 0)"


def test_values_the_libraries_would_refuse_late():
    assert error(None, "training.betas=[0.9, 1.0]") == (
        "override 'training.betas=[0.9, 1.0]': Adam's betas must each be in [0, 1), got [0.9, 1.0]")
    assert error(None, "training.seed=-1").startswith("override 'training.seed=-1': Input should be greater than or equal to 0")


def test_validation_settings_need_a_dev_set():
    assert error(None, "training.early_stopping.patience=3") == (
        "override 'training.early_stopping.patience=3': acts on validations, but there is no dev set (set data.dev)")
    assert "training.lr_schedule: acts on validations" in str(pytest.raises(
        ConfigError, from_dict, {"training": {"lr_schedule": "plateau"}}).value)
    assert load_config(None, ["training.early_stopping.patience=3", "data.dataset=cmudict"]).data.dataset == "cmudict"


def test_learned_positions_must_hold_the_longest_pair(tmp_path: Path):
    path = write(tmp_path / "c.yaml", TRANSFORMER + "  positions: learned\n  max_positions: 100\n")
    assert error(path) == (f"{path}: model.max_positions: 100 learned positions cannot hold the 201 that "
                           f"data.max_src_len / data.max_tgt_len allow (+1 for EOS)")
    assert load_config(path, ["data.max_src_len=99", "data.max_tgt_len=50"]).model.max_positions == 100


def test_shipped_configs_pass_the_checks():
    for path in sorted((Path(__file__).parent.parent / "seq2seqkit" / "configs").glob("*.yaml")):
        assert isinstance(load_config(path), Config)


# --- unknown keys: did you mean ----------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("training.epoch=3", "unknown key (did you mean training.epochs?)"),
    ("training.early_stopping.patients=2", "unknown key (did you mean training.early_stopping.patience?)"),
    ("training.beam_size=4", "unknown key (did you mean search.beam_size?)"),  # the key of another section
    ("modle.cell=gru", "modle: unknown key (did you mean model?)"),  # the key at fault is not the override's
    ("training.zzz=1", "unknown key"),
])
def test_unknown_key_suggests_the_closest(override, expected):
    assert error(None, override) == f"override {override!r}: {expected}"


# --- which source is to blame: the file or the override ----------------------------------

def test_error_from_the_file_names_the_file_and_from_an_override_the_override(tmp_path: Path):
    path = write(tmp_path / "c.yaml", "training:\n  epochs: 0\n")
    assert error(path).startswith(f"{path}: training.epochs: Input should be greater than or equal to 1")
    good = write(tmp_path / "good.yaml", "training:\n  epochs: 2\n")
    assert error(good, "training.epochs=x") == (
        "override 'training.epochs=x': Input should be a valid integer, unable to parse string as an integer")
    # a check across keys blames the override that took part, naming the key at fault
    heads = write(tmp_path / "heads.yaml", TRANSFORMER + "  heads: 4\n")
    assert error(heads, "model.embed_dim=30") == (
        "override 'model.embed_dim=30': model.heads: 4 heads do not divide model.embed_dim 30 "
        "(each head gets embed_dim / heads dimensions)")
    assert error(heads, "training.epochs=2", "model.heads=7").startswith("override 'model.heads=7': 7 heads")


def test_resume_override_error_names_the_override(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    write(model / "config.yaml", "training:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as info:
        load_for_resume(model, ["training.epochs=true"])
    assert str(info.value) == ("override 'training.epochs=true': expected a number, got true "
                               "(YAML reads true/false/yes/no/on/off as booleans)")


def test_cli_refuses_before_reading_data_or_building(tmp_path: Path, capsys):
    """The data files do not exist: the config error is the one reported, and nothing is written."""
    path = write(tmp_path / "c.yaml", TRANSFORMER + "  heads: 5\ndata:\n  train:\n    path: missing.tsv\n"
                                      f"output_dir: {tmp_path / 'out'}\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"s2s: error: {path}: model.heads: 5 heads do not divide model.embed_dim 64 " \
                  f"(each head gets embed_dim / heads dimensions)\n"
    assert not (tmp_path / "out").exists()


# --- search flags name the flag ----------------------------------------------------------

def flags(**given) -> Namespace:
    names = ("batch_size", "beam", "length_penalty", "nbest", "sample", "temperature", "top_k", "top_p")
    return Namespace(**{n: given.get(n) for n in names})


def test_search_flag_errors_name_the_flag():
    tr = SimpleNamespace(cfg=Config())
    with pytest.raises(ConfigError) as info:
        apply_search_flags(tr, flags(nbest=3, beam=2))
    assert str(info.value) == "--nbest: 3 best outputs asked for, but beam search keeps only beam_size=2 (raise beam_size, or sample)"
    tr.cfg = from_dict({"search": {"beam_size": 4, "nbest": 3}})
    with pytest.raises(ConfigError, match=r"^--beam: 3 best outputs asked for, but beam search keeps only beam_size=2"):
        apply_search_flags(tr, flags(beam=2))  # nbest comes from the model's config: the flag given is named
    with pytest.raises(ConfigError, match=r"^--top-p: Input should be less than or equal to 1"):
        apply_search_flags(tr, flags(top_p=1.5))
    with pytest.raises(ConfigError, match=r"^--temperature: Input should be a finite number"):
        apply_search_flags(tr, flags(temperature=float("nan")))
    apply_search_flags(tr, flags(beam=5, nbest=5))
    assert (tr.cfg.search.beam_size, tr.cfg.search.nbest) == (5, 5)


@pytest.mark.parametrize("override", ["model.hidden_size=" + "x" * 100_000, "model.no_such" + "x" * 100_000 + "=3",
                                      "training.epochs=[" + "1," * 50_000, "x" * 100_000])
def test_a_huge_override_is_quoted_by_its_start_and_length(override):
    message = error(None, override)
    assert len(message) < 400 and f"({len(override):,} characters)" in message and override[:40] in message
