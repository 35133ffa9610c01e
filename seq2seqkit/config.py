"""Typed configuration: one pydantic model per section, validated when loaded.

A config is a YAML file whose keys mirror these classes. Every field has a default that
works, unknown keys are rejected (a typo must not be silently ignored), and errors name
the dotted key that is wrong, e.g. ``training.teacher_forcing.ratio: must be <= 1``.
Command-line overrides use dotted paths (``training.epochs=2``), as in Hydra/OmegaConf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- data
class CorpusConfig(_Section):
    """One split: two line-aligned files (``src``+``tgt``) or one TSV/JSONL file (``path``)."""

    src: str | None = None
    tgt: str | None = None
    path: str | None = None
    format: Literal["auto", "text", "tsv", "jsonl"] = "auto"

    @model_validator(mode="after")
    def _one_layout(self) -> CorpusConfig:
        if self.path and (self.src or self.tgt):
            raise ValueError("give either 'path' (one TSV/JSONL file) or 'src' and 'tgt', not both")
        if not self.path and bool(self.src) != bool(self.tgt):
            raise ValueError("'src' and 'tgt' must be given together")
        return self

    @property
    def is_set(self) -> bool:
        return bool(self.path or self.src)

    def files(self) -> tuple[str, str | None]:
        """(first file, second file or None) in the form the corpus readers take."""
        return (self.path, None) if self.path else (self.src or "", self.tgt)


class DataConfig(_Section):
    """Where the pairs come from and which ones are kept."""

    dataset: Literal["cmudict"] | None = None  # a built-in task fills train/dev/test
    train: CorpusConfig = CorpusConfig()
    dev: CorpusConfig = CorpusConfig()
    test: CorpusConfig = CorpusConfig()
    max_src_len: int = Field(200, ge=1)  # in tokens, after tokenization
    max_tgt_len: int = Field(200, ge=1)
    on_invalid: Literal["skip", "error"] = "skip"  # empty sides and over-long pairs
    dev_max_examples: int | None = Field(None, ge=1)  # cap the dev set used for validation


class TokenizerConfig(_Section):
    """How one side is cut into tokens. ``sentencepiece`` is trained on the training data."""

    kind: Literal["sentencepiece", "char", "word"] = "sentencepiece"
    model_type: Literal["unigram", "bpe"] = "unigram"  # sentencepiece only
    vocab_size: int = Field(8000, ge=8)  # sentencepiece only
    character_coverage: float = Field(1.0, gt=0, le=1)
    min_freq: int = Field(1, ge=1)  # char/word only
    max_vocab: int | None = Field(None, ge=4)  # char/word only
    lowercase: bool = False


class TokenizersConfig(_Section):
    src: TokenizerConfig = TokenizerConfig()
    tgt: TokenizerConfig = TokenizerConfig()
    joint: bool = False  # one sentencepiece model and vocabulary for both sides (src settings)

    @model_validator(mode="after")
    def _joint_needs_sp(self) -> TokenizersConfig:
        if self.joint and self.src.kind != self.tgt.kind:
            raise ValueError("joint vocabulary needs the same tokenizer kind on both sides")
        return self


# ---------------------------------------------------------------------------- model
class ModelConfig(_Section):
    """Architecture. ``family`` picks the class; the other keys are its hyper-parameters.

    rnn: the plain encoder-decoder (fixed context vector). attention: the same RNNs with
    Bahdanau or Luong attention over all encoder states. transformer: Vaswani et al. 2017,
    where ``embed_dim`` is d_model and ``encoder_layers``/``decoder_layers`` count blocks.
    """

    family: Literal["rnn", "attention", "transformer"] = "rnn"
    cell: Literal["gru", "lstm"] = "gru"
    embed_dim: int = Field(256, ge=1)
    hidden_size: int = Field(512, ge=1)
    encoder_layers: int = Field(1, ge=1)
    decoder_layers: int = Field(1, ge=1)
    bidirectional: bool = True
    dropout: float = Field(0.2, ge=0, lt=1)
    feed_context: bool = True  # rnn: context vector also fed at every step (Cho et al. 2014)
    tie_embeddings: bool = False  # output projection shares the target embedding matrix
    share_embeddings: bool = False  # source and target share one embedding (needs tokenizer.joint)
    # attention RNN
    attention: Literal["bahdanau", "luong_dot", "luong_general"] = "bahdanau"
    input_feeding: bool = True  # Luong et al.: previous attentional vector fed to the next step
    # transformer
    heads: int = Field(8, ge=1)
    ff_dim: int = Field(2048, ge=1)
    norm: Literal["pre", "post"] = "pre"
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = Field(1024, ge=1)
    attention_dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _family_options(self) -> ModelConfig:
        if self.share_embeddings and self.family != "transformer":
            raise ValueError("share_embeddings is only implemented for family 'transformer'")
        return self


# ------------------------------------------------------------------------- training
class TeacherForcingConfig(_Section):
    """Probability of feeding the ground-truth token (vs. the model's own prediction).

    Schedules follow scheduled sampling (Bengio et al. 2015), decaying from ``ratio``
    towards ``min_ratio`` over training steps.
    """

    ratio: float = Field(1.0, ge=0, le=1)
    schedule: Literal["constant", "linear", "exponential", "inverse_sigmoid"] = "constant"
    min_ratio: float = Field(0.0, ge=0, le=1)
    decay_steps: int = Field(10000, ge=1)  # linear: steps to reach min_ratio
    decay: float = Field(0.9999, gt=0, le=1)  # exponential: ratio * decay**step
    sigmoid_k: float = Field(1000.0, ge=1)  # inverse_sigmoid: k / (k + exp(step / k))


class EarlyStoppingConfig(_Section):
    metric: str = "loss"  # loss, ppl, bleu, chrf, wer, per, exact
    patience: int | None = Field(None, ge=1)  # validations without improvement; None = off


class TrainingConfig(_Section):
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop after this many updates (overrides epochs)
    batch_tokens: int = Field(4096, ge=1)  # per batch: sentences x longest side, padding counted
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    clip_grad_norm: float | None = Field(1.0, gt=0)
    lr_schedule: Literal["constant", "plateau", "inverse_sqrt"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # linear warm-up (all schedules)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(2, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    teacher_forcing: TeacherForcingConfig = TeacherForcingConfig()
    validate_every: int = Field(0, ge=0)  # steps; 0 = at the end of every epoch
    checkpoint_every: int = Field(200, ge=1)  # steps between 'last' checkpoints
    keep_epoch_checkpoints: int = Field(0, ge=0)  # weights of the last N epochs, for `s2s average`
    log_every: int = Field(50, ge=1)
    exposure_bias: bool = True  # also compute free-running validation loss
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    num_threads: int | None = Field(None, ge=1)  # torch intra-op threads on CPU
    # bf16: forward pass under torch.autocast in bfloat16 (weights, gradients and the optimizer
    # stay fp32). Matrix multiplies run ~2x faster on CPUs with AVX512-BF16/AMX and on GPUs.
    precision: Literal["fp32", "bf16"] = "fp32"


# --------------------------------------------------------------------------- search
class SearchConfig(_Section):
    """Decoding. Output length is capped at ``max_len_a * source_length + max_len_b`` and at
    ``max_output_tokens``.

    ``beam_size`` 1 is greedy search; above 1, beam search with GNMT length penalty
    ``((5 + length) / 6) ** length_penalty``. ``sample`` draws tokens instead (temperature,
    top-k, top-p), for generation tasks such as dialogue.

    Limits keep the memory of one input bounded (search holds the encoded source, and beam
    search ``beam_size`` copies of it): an input longer than ``max_input_tokens`` source tokens
    (or than a learned-position Transformer's ``model.max_positions`` minus its EOS) is cut to
    the limit (``on_long_input: truncate``) or not translated (``refuse``: an empty output), with
    a warning that names it; the other inputs are translated as usual.

    Generation controls, off by default, apply to every search (see
    :mod:`~seq2seqkit.generation_controls`): ``no_repeat_ngram_size`` bans any n-gram from
    occurring twice in an output; ``min_len`` bans EOS until the output has that many tokens (EOS
    not counted; the length cap is raised to it, and it may not exceed ``max_output_tokens``);
    ``repetition_penalty`` multiplies the log-probability of every token already output by it
    (CTRL; above 1 discourages repeats).
    """

    max_len_a: float = Field(1.5, ge=0)
    max_len_b: int = Field(10, ge=1)
    max_output_tokens: int = Field(1024, ge=1)  # hard cap on any output, whatever its source length
    max_input_tokens: int = Field(1024, ge=1)  # longer inputs: see on_long_input
    on_long_input: Literal["truncate", "refuse"] = "truncate"
    batch_size: int = Field(64, ge=1)  # sentences per decoding batch
    beam_size: int = Field(1, ge=1, le=256)
    length_penalty: float = Field(1.0, ge=0)
    nbest: int = Field(1, ge=1, le=256)
    sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)  # 0: no top-k filtering
    top_p: float = Field(1.0, gt=0, le=1)
    no_repeat_ngram_size: int = Field(0, ge=0)  # 0: off
    min_len: int = Field(0, ge=0)  # fewest output tokens, EOS not counted; 0: off
    repetition_penalty: float = Field(1.0, gt=0)  # 1: off

    @model_validator(mode="after")
    def _settings_fit(self) -> SearchConfig:
        if self.nbest > self.beam_size and not self.sample:
            raise ValueError("nbest cannot exceed beam_size")
        if self.min_len > self.max_output_tokens:
            raise ValueError(f"min_len ({self.min_len}) cannot exceed max_output_tokens ({self.max_output_tokens})")
        return self


class EvaluationConfig(_Section):
    metrics: list[Literal["bleu", "chrf", "wer", "per", "exact"]] = ["bleu", "chrf"]
    group_by_source: bool = False  # identical sources = one item with alternative references
    examples: int = Field(5, ge=0)  # predictions shown after evaluation


class Config(_Section):
    name: str = "model"
    output_dir: str = "runs/model"
    data: DataConfig = DataConfig()
    tokenizer: TokenizersConfig = TokenizersConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig = SearchConfig()
    evaluation: EvaluationConfig = EvaluationConfig()


# --------------------------------------------------------------------------- loading
def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {key}: {msg}{more}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value parsed as a YAML scalar/list)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. training.epochs=2")
    key, _, raw = item.partition("=")
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {item!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e.problem})") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict, creating sections as needed."""
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or start from defaults when ``path`` is None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    apply_overrides(raw, overrides or [])
    return from_dict(raw, source)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
