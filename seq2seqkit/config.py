"""Typed configuration: one pydantic model per section, validated when loaded.

A config is a YAML file whose keys mirror these classes. Every field has a default that
works, unknown keys are rejected (a typo must not be silently ignored), and errors name
the dotted key that is wrong, e.g. ``training.teacher_forcing.ratio: must be <= 1``.
Command-line overrides use dotted paths (``training.epochs=2``), as in Hydra/OmegaConf.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from .errors import ConfigError


class Invalid(ValueError):
    """A check across fields failed: ``key`` is the dotted key at fault, relative to the section
    that raised it, and ``also`` the other keys that take part (so that an error caused by a
    command-line override can name that override)."""

    def __init__(self, key: str, problem: str, also: tuple[str, ...] = ()) -> None:
        super().__init__(problem)
        self.key, self.also = key, also


def _types(annotation: Any) -> set[Any]:
    """The plain types an annotation is made of: ``tuple[float, float] | None`` -> {tuple, float, NoneType}."""
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return {type(a) for a in args}
    origin = get_origin(annotation)
    found = {origin} if origin not in (None, Union, types.UnionType) else set()
    if not args:
        found.add(annotation)
    for a in args:
        found |= _types(a)
    return found


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` are refused wherever a number is expected.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML reads `yes`, `on`, `true` as booleans, and pydantic would take them as 1 (or 1.0):
        a boolean where a number is meant is refused instead."""
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) for v in items):
            kinds = _types(cls.model_fields[info.field_name].annotation)  # type: ignore[index]
            if bool not in kinds and kinds & {int, float}:
                shown = str(value).lower() if isinstance(value, bool) else "a boolean"
                raise ValueError(f"expected a number, got {shown} (YAML reads true/false/yes/no/on/off as booleans)")
        return value


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
    # Cut sources longer than max_src_len to their first max_src_len tokens (training, dev and
    # generation; the count is logged) instead of treating the pair as invalid (as fairseq's
    # --truncate-source). Over-long targets are still invalid.
    truncate_src: bool = False
    dev_max_examples: int | None = Field(None, ge=1)  # cap the dev set used for validation
    # Dialogue: how many previous turns a source holds (`s2s prepare dailydialog --turns`, which
    # the recipe's data were prepared with); `s2s chat` keeps that many. None: not a dialogue model.
    context_turns: int | None = Field(None, ge=1)
    # Large corpora (data/shards.py): a directory written by `s2s preprocess` holding the tokenized
    # training split and its tokenizers; training reads its batches from there (data.train may be
    # left out; where given it must name the files the directory was made from).
    preprocessed: str | None = None
    # Without data.preprocessed: keep the tokenized training split (and tokenizers) in
    # $S2S_CACHE_DIR/shards (default ~/.cache/seq2seqkit/shards), so a later run with the same
    # data and tokenizer settings skips tokenization; false: tokenize into memory at every start.
    cache: bool = True


class TokenizerConfig(_Section):
    """How one side is cut into tokens. ``sentencepiece`` is trained on the training data."""

    kind: Literal["sentencepiece", "char", "word"] = "sentencepiece"
    model_type: Literal["unigram", "bpe"] = "unigram"  # sentencepiece only
    vocab_size: int = Field(8000, ge=8)  # sentencepiece only
    character_coverage: float = Field(1.0, gt=0, le=1)
    min_freq: int = Field(1, ge=1)  # char/word only
    max_vocab: int | None = Field(None, ge=5)  # char/word only; counts the 5 reserved entries (specials, <sep>)
    lowercase: bool = False


class TokenizersConfig(_Section):
    src: TokenizerConfig = TokenizerConfig()
    tgt: TokenizerConfig = TokenizerConfig()
    joint: bool = False  # one sentencepiece model and vocabulary for both sides (src settings)

    @model_validator(mode="after")
    def _joint_needs_sp(self) -> TokenizersConfig:
        if self.joint and self.src.kind != self.tgt.kind:
            raise Invalid("joint", f"a joint vocabulary needs the same tokenizer kind on both sides "
                                   f"(src.kind is {self.src.kind!r}, tgt.kind {self.tgt.kind!r})", ("src.kind", "tgt.kind"))
        return self


# ---------------------------------------------------------------------------- model
class _ModelBase(_Section):
    """The keys every family has. ``family`` picks the class (see ``ModelConfig``); each family's
    class adds its own keys, so a key of another family is refused like any unknown key."""

    family: str
    embed_dim: int = Field(256, ge=1)  # transformer: d_model
    encoder_layers: int = Field(1, ge=1)  # transformer: blocks
    decoder_layers: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    tie_embeddings: bool = False  # output projection shares the target embedding matrix


class RecurrentConfig(_ModelBase):
    """The keys of both RNN families: their encoder (models/rnn.py's RNNEncoder) and decoder cells."""

    cell: Literal["gru", "lstm"] = "gru"
    hidden_size: int = Field(512, ge=1)
    bidirectional: bool = True
    # Not keys of the RNN families: read by checks that apply to every family.
    share_embeddings: ClassVar[bool] = False


class _CopyOptions(_Section):
    """The keys of the families that attend over the source."""

    # Pointer-generator (See et al. 2017; models/copy.py): at every step a learned gate mixes the
    # vocabulary distribution with the attention over the source, so source tokens (names, rare
    # pieces) can be copied. Attention RNN: its attention; Transformer: the last decoder layer's
    # cross-attention, averaged over heads. Needs tokenizer.joint (source ids = target ids).
    copy_attn: bool = False  # as OpenNMT-py's -copy_attn
    # Coverage (See et al. 2017): the sum of the copy attention of the steps so far; its loss
    # sum_i min(a_i, c_i) per target token is logged and added with training.coverage_weight.
    # Needs model.copy_attn.
    coverage: bool = False

    @model_validator(mode="after")
    def _coverage_needs_copy(self) -> _CopyOptions:
        if self.coverage and not self.copy_attn:
            raise Invalid("coverage", "is defined on the copy attention: needs model.copy_attn: true", ("copy_attn",))
        return self


class RNNConfig(RecurrentConfig):
    """The plain encoder-decoder: the decoder sees one fixed context vector (Cho et al. 2014)."""

    family: Literal["rnn"] = "rnn"
    feed_context: bool = True  # context vector also fed at every step (Cho et al. 2014)
    # No attention over the source, so nothing to copy with: not keys of this family, read by
    # checks that apply to every family.
    copy_attn: ClassVar[bool] = False
    coverage: ClassVar[bool] = False


class AttentionConfig(_CopyOptions, RecurrentConfig):
    """The same RNNs with Bahdanau or Luong attention over all encoder states."""

    family: Literal["attention"] = "attention"
    attention: Literal["bahdanau", "luong_dot", "luong_general"] = "bahdanau"
    input_feeding: bool = True  # Luong et al.: previous attentional vector fed to the next step
    # The coverage vector is also an input of the Bahdanau attention score (See et al. eq. 11), so
    # the decoder can see what it has attended to. Needs model.coverage.
    coverage_feature: bool = False

    @model_validator(mode="after")
    def _coverage_feature(self) -> AttentionConfig:
        if self.coverage_feature and not self.coverage:
            raise Invalid("coverage_feature", "needs model.coverage: true", ("coverage",))
        if self.coverage_feature and self.attention != "bahdanau":
            raise Invalid("coverage_feature", "only implemented for attention 'bahdanau'", ("attention",))
        return self


class TransformerConfig(_CopyOptions, _ModelBase):
    """Vaswani et al. 2017: ``embed_dim`` is d_model, ``encoder_layers``/``decoder_layers`` count blocks."""

    family: Literal["transformer"] = "transformer"
    heads: int = Field(8, ge=1)
    ff_dim: int = Field(2048, ge=1)
    norm: Literal["pre", "post"] = "pre"
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = Field(1024, ge=1)
    attention_dropout: float = Field(0.1, ge=0, lt=1)
    share_embeddings: bool = False  # source and target share one embedding (needs tokenizer.joint)

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.embed_dim % self.heads:
            raise Invalid("heads", f"{self.heads} heads do not divide model.embed_dim {self.embed_dim} "
                                   f"(each head gets embed_dim / heads dimensions)", ("embed_dim",))
        return self


MODEL_FAMILIES: dict[str, type[_ModelBase]] = {"rnn": RNNConfig, "attention": AttentionConfig,
                                               "transformer": TransformerConfig}


def _family(value: Any) -> Any:
    """The family a model section names ("rnn" where it names none)."""
    family = value.get("family", "rnn") if isinstance(value, dict) else getattr(value, "family", None)
    return family if isinstance(family, str) else None


# The model section: the class of its family. A key of another family is an unknown key.
ModelConfig = Annotated[
    Union[Annotated[RNNConfig, Tag("rnn")], Annotated[AttentionConfig, Tag("attention")],
          Annotated[TransformerConfig, Tag("transformer")]],
    Discriminator(_family, custom_error_type="model_family",
                  custom_error_message="Input should be 'rnn', 'attention' or 'transformer'"),
]
_MODEL = TypeAdapter(ModelConfig)


def model_config(**keys: Any) -> ModelConfig:
    """The model section ``keys`` give (``family`` picks the class, "rnn" where absent), validated."""
    return _MODEL.validate_python(keys)


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
    # Where the predictions fed below ratio 1 come from (see teacher_forcing.py). parallel: a
    # teacher-forced pass without gradients, then a second pass fed the mix (every family, a cost
    # independent of length and hardware); sequential: decoded step by step on the mix so far
    # (Bengio et al. 2015), T decoder steps one after another. Irrelevant at ratio 1.
    mode: Literal["parallel", "sequential"] = "parallel"


class EarlyStoppingConfig(_Section):
    metric: str = "loss"  # loss, ppl, acc, eb_loss@P, eb_gap@P, or one of evaluation.metrics (bleu, rougeL, ...)
    patience: int | None = Field(None, ge=1)  # validations without improvement; None = off


class TrainingConfig(_Section):
    seed: int = Field(1234, ge=0, lt=2**63)  # numpy's generators take no negative seed, torch none past 2**64
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
    warmup_steps: int = Field(0, ge=0)  # linear warm-up (constant, inverse_sqrt; refused with plateau)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(2, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Weight of the coverage loss (model.coverage) in the training loss; See et al. use 1.
    coverage_weight: float = Field(1.0, ge=0)
    teacher_forcing: TeacherForcingConfig = TeacherForcingConfig()
    validate_every: int = Field(0, ge=0)  # steps; 0 = at the end of every epoch
    checkpoint_every: int = Field(200, ge=1)  # steps between 'last' checkpoints
    keep_epoch_checkpoints: int = Field(0, ge=0)  # weights of the last N epochs, for `s2s average`
    log_every: int = Field(50, ge=1)
    # At validation, also the dev loss with a share p of the decoder's inputs replaced by the
    # model's own predictions (eb_loss@p) and its excess over the teacher-forced loss (eb_gap@p).
    exposure_bias: bool = True
    exposure_bias_rates: list[float] = [0.25, 0.5, 1.0]
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    num_threads: int | None = Field(None, ge=1)  # torch intra-op threads on CPU (None: see runtime.configure_process)
    # bf16: forward pass under torch.autocast in bfloat16 (weights, gradients and the optimizer
    # stay fp32). Matrix multiplies run ~2x faster on CPUs with AVX512-BF16/AMX and on GPUs.
    # fp16: the same in float16, for GPUs without bf16; its narrow range needs loss scaling
    # (torch.amp.GradScaler): an update whose gradients overflow is skipped and the scale halved.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Give freed heap back to the OS around validation and whenever resident memory passes
    # release_memory_above x the first 10 updates' peak (runtime.HeapBound): a fragmenting heap
    # otherwise keeps growing. Lower: less memory, more releases, each one costing page faults.
    # null (the default): on, under either allocator. Under jemalloc (what s2s train runs on where
    # it is installed) the Multi30k Transformer levels off by itself (1.36x its first updates'
    # peak), so the 1.5x limit never acts there, but the SAMSum copy model's heap grew by 15 MiB
    # an update without it (12.6 GB at update 700; its batches differ in source length, and so in
    # the size of every (batch x summary x source) block); with it, one release in 150 updates
    # held a fresh run at 1.50x (BENCHMARKS.md, "Memory: a SAMSum copy model's heap").
    release_memory: bool | None = None
    # null (the default): 1.5, and 1.2 for a resumed process under jemalloc, whose first updates'
    # peak already holds the loaded checkpoint's memory: that limit held the Multi30k Transformer
    # resumed at an epoch's end at 1.43x the step's peak at the same speed, and one resumed
    # mid-epoch at 1.56x against 1.69x (BENCHMARKS.md, "Memory: a default limit for resumed runs").
    release_memory_above: float | None = Field(None, gt=1)
    # Batches whose gradients are summed into one update (and, under torchrun, per process): an
    # update of N processes x accumulate_steps batches is normalised by all their target tokens.
    accumulate_steps: int = Field(1, ge=1)
    # Under torchrun: how long a process waits in a collective (an update's gradient exchange, or
    # the wait while rank 0 validates and saves) before it stops with an error naming the run's
    # lost process. Must exceed the longest validation + checkpoint.
    distributed_timeout_s: float = Field(1800.0, gt=0)

    @field_validator("exposure_bias_rates")
    @classmethod
    def _rates(cls, rates: list[float]) -> list[float]:
        if not rates:
            raise ValueError("give at least one rate (or set training.exposure_bias: false)")
        if not all(0 < p <= 1 for p in rates):
            raise ValueError(f"each rate is a share of decoder inputs, in (0, 1]: got {rates}")
        if len(set(rates)) != len(rates):
            raise ValueError(f"a rate is given twice: {rates}")
        return sorted(rates)

    @model_validator(mode="after")
    def _schedule_options(self) -> TrainingConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise Invalid("betas", f"Adam's betas must each be in [0, 1), got {list(self.betas)}")
        if self.lr_schedule == "plateau" and self.warmup_steps:
            raise Invalid("warmup_steps", "not supported with lr_schedule=plateau (set it to 0)", ("lr_schedule",))
        return self


def exposure_bias_key(kind: str, rate: float) -> str:
    """The logged name of an exposure-bias number: ``eb_loss@0.5``, ``eb_gap@0.5``."""
    return f"eb_{kind}@{rate:g}"


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
    # and at most this many source tokens x rows per input (beam_size; nbest when sampling) in
    # one, padding counted: search holds a copy of each input per row, so a batch of long inputs
    # at a wide beam is split (one input alone may exceed it: it is decoded alone)
    max_batch_tokens: int = Field(2**18, ge=1)
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
            raise Invalid("nbest", f"{self.nbest} best outputs asked for, but beam search keeps only "
                                   f"beam_size={self.beam_size} (raise beam_size, or sample)", ("beam_size", "sample"))
        if self.min_len > self.max_output_tokens:
            raise Invalid("min_len", f"{self.min_len} cannot exceed max_output_tokens ({self.max_output_tokens})",
                          ("max_output_tokens",))
        return self


class EvaluationConfig(_Section):
    # ROUGE F1 (rouge-score, Porter stemming): rouge1, rouge2, rougeL, rougeLsum (see metrics.py)
    # dialogue: BLEU-1/2 (sacrebleu, max_ngram_order 1/2), Distinct-1/2, mean output length in tokens
    metrics: list[Literal["bleu", "chrf", "wer", "per", "exact", "rouge1", "rouge2", "rougeL", "rougeLsum",
                          "bleu1", "bleu2", "distinct1", "distinct2", "length"]] = ["bleu", "chrf"]
    group_by_source: bool = False  # identical sources = one item with alternative references
    examples: int = Field(5, ge=0)  # predictions shown after evaluation


class Config(_Section):
    name: str = "model"
    output_dir: str = "runs/model"
    data: DataConfig = DataConfig()
    tokenizer: TokenizersConfig = TokenizersConfig()
    model: ModelConfig = RNNConfig()
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig = SearchConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    def validation_metrics(self) -> list[str]:
        """What a validation during training computes (and early stopping may watch)."""
        tc = self.training
        eb = [exposure_bias_key(k, p) for p in tc.exposure_bias_rates for k in ("loss", "gap")] if tc.exposure_bias else []
        return ["loss", "ppl", "acc", *eb, *self.evaluation.metrics]

    @model_validator(mode="after")
    def _sections_agree(self) -> Config:
        """Checks across sections: combinations that cannot work are refused before any work."""
        m, tc, data = self.model, self.training, self.data
        if m.share_embeddings and not self.tokenizer.joint:
            raise Invalid("model.share_embeddings", "needs one vocabulary for both sides (set tokenizer.joint: true)",
                          ("tokenizer.joint",))
        if m.copy_attn and not self.tokenizer.joint:
            raise Invalid("model.copy_attn", "copies source tokens as target tokens, so it needs one vocabulary for both "
                          "sides (set tokenizer.joint: true)", ("tokenizer.joint",))
        if tc.coverage_weight != TrainingConfig.model_fields["coverage_weight"].default and not m.coverage:
            raise Invalid("training.coverage_weight", "has no effect without model.coverage: true", ("model.coverage",))
        metric = tc.early_stopping.metric
        if metric not in self.validation_metrics():
            raise Invalid("training.early_stopping.metric", f"{metric!r} is not computed at validation (choose from "
                          f"{', '.join(self.validation_metrics())}; evaluation.metrics adds more)",
                          ("evaluation.metrics", "training.exposure_bias"))
        if metric == "length":
            raise Invalid("training.early_stopping.metric", "'length' (the mean output length) is neither better high "
                          "nor low: choose another metric")
        needs_dev = {"training.early_stopping.patience": tc.early_stopping.patience is not None,
                     "training.lr_schedule": tc.lr_schedule == "plateau"}
        for key, used in needs_dev.items():
            if used and not data.dev.is_set and data.dataset is None:
                raise Invalid(key, "acts on validations, but there is no dev set (set data.dev)", ("data.dev",))
        longest = max(data.max_src_len, data.max_tgt_len) + 1  # + EOS (source) / BOS (target)
        if m.family == "transformer" and m.positions == "learned" and longest > m.max_positions:
            raise Invalid("model.max_positions", f"{m.max_positions} learned positions cannot hold the {longest} "
                          f"that data.max_src_len / data.max_tgt_len allow (+1 for EOS)",
                          ("data.max_src_len", "data.max_tgt_len", "model.positions"))
        return self


# --------------------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    silently keeps the last one, so a pasted-in second ``training:`` section would win unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: keys given later override it
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {seen[key] + 1})", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:  # PyYAML's composer recurses per level: `[[[[...` a few thousand deep
        raise yaml.YAMLError("nested too deeply") from None
    except yaml.reader.ReaderError as e:  # its message spans two lines; the callers want a problem and a line
        line = text.count("\n", 0, e.position)
        shown = f"#x{ord(e.character):04x}" if isinstance(e.character, str) else f"0x{e.character:02x}"
        mark = yaml.Mark("<config>", e.position, line, 0, None, None)
        raise yaml.MarkedYAMLError(problem=f"character {shown} is not allowed in YAML (a control character, or a byte that is not UTF-8?)",
                                   problem_mark=mark) from None


def _section(loc: tuple[str, ...], family: str = "rnn") -> type[BaseModel] | None:
    """The config class at a dotted location (``("training", "early_stopping")`` ->
    EarlyStoppingConfig; ``("model",)`` -> the class of ``family``), or None where the location
    is not a section."""
    cls: type[BaseModel] = Config
    for part in loc:
        field = cls.model_fields.get(part)
        ann = MODEL_FAMILIES[family] if (cls, part) == (Config, "model") else field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def _section_keys() -> dict[str, set[str]]:
    """The keys of each top-level section (of the model section: those of every family)."""
    keys = {name: set(f.annotation.model_fields) for name, f in Config.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    keys["model"] = {k for cls in MODEL_FAMILIES.values() for k in cls.model_fields}
    return keys


def _suggest(loc: tuple[str, ...], family: str = "rnn") -> str:
    """' (did you mean training.epochs?)' for an unknown key close to a known one of its section,
    or to a key of the same name in another section; '' when nothing is close."""
    section = _section(loc[:-1], family)
    if section is not None:
        close = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1, cutoff=0.6)
        if close:
            return f" (did you mean {'.'.join([*loc[:-1], close[0]])}?)"
    elsewhere = [f"{name}.{loc[-1]}" for name, keys in _section_keys().items() if loc[-1] in keys and (name,) != loc[:-1]]
    return f" (did you mean {elsewhere[0]}?)" if elsewhere else ""


def _unknown_key(loc: tuple[str, ...], family: str | None) -> tuple[str, bool]:
    """What is wrong with an unknown key, and whether it is a key of another model family."""
    owners = [f"'{f}'" for f, cls in MODEL_FAMILIES.items() if loc[-1] in cls.model_fields]
    if family is not None and loc[:-1] == ("model",) and owners:
        return (f"not a key of family '{family}' (only of {'family' if len(owners) == 1 else 'families'} "
                f"{' and '.join(owners)})"), True
    return "unknown key" + _suggest(loc, family or "rnn"), False


def _format_error(err: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    """One line for the first error: ``SOURCE: dotted.key: problem``, where SOURCE is the
    command-line override that set the key (if one did), else the config file."""
    first = err.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    family = None
    if loc[:1] == ("model",) and loc[1:2] and loc[1] in MODEL_FAMILIES:  # the family's class: not a key
        family, loc = loc[1], loc[:1] + loc[2:]
    involved = [loc]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, Invalid):
        involved = [loc + tuple(k.split(".")) for k in (cause.key, *cause.also)]
        loc = involved[0]
    if first["type"] == "model_family":
        if isinstance(first["input"], dict):
            loc = involved[0] = loc + ("family",)
        else:
            msg = "Input should be a valid dictionary (the keys of the model section)"
    if first["type"] == "extra_forbidden":
        msg, other_family = _unknown_key(loc, family)
        if other_family:  # an override of model.family is as much at fault as the key
            involved.append(("model", "family"))
    key = ".".join(loc) or "<root>"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    for item in reversed(overrides or []):  # the last override of a key is the one in force
        path = tuple(item.partition("=")[0].strip().split("."))
        if any(k[:len(path)] == path or path[:len(k)] == k for k in involved if k):
            where = "" if path == loc else f"{key}: "
            return f"override {_shown(item)}: {where}{msg}{more}"
    return f"{source}: {key}: {msg}{more}"


def _shown(item: str, limit: int = 120) -> str:
    """An override as an error quotes it: a long one cut to its start and its length (a 100 kB
    value pasted by mistake would otherwise be the whole error)."""
    if len(item) <= limit:
        return repr(item)
    return f"{item[:limit]!r}... ({len(item):,} characters)"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value parsed as a YAML scalar/list)."""
    if "=" not in item:
        raise ConfigError(f"override {_shown(item)}: expected key=value, e.g. training.epochs=2")
    key, _, raw = item.partition("=")
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {_shown(item)}: empty key segment")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {_shown(item)}: value is not valid YAML ({getattr(e, 'problem', e)})") from None
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
                raise ConfigError(f"override {_shown(item)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def from_dict(raw: dict[str, Any], source: str = "config", overrides: list[str] | None = None) -> Config:
    """Validate ``raw`` (read from ``source``) after applying ``overrides``; an error names the
    override that caused it, or else ``source``."""
    apply_overrides(raw, overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source, overrides)) from None


MAX_CONFIG_BYTES = 2**20


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; every problem with the file is one ConfigError."""
    try:
        with open(path, "rb") as f:  # read to a limit: `/dev/zero` or a huge file given by mistake must not hang
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES // 2**20} MiB: not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the config as UTF-8") from None
    try:
        raw = _load_yaml(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or start from defaults when ``path`` is None), apply overrides, validate."""
    raw = read_config_file(path) if path is not None else {}
    return from_dict(raw, "config" if path is None else str(path), overrides)


def read_saved_config(path: str | Path) -> dict[str, Any]:
    """The mapping in a model directory's ``config.yaml`` (written by :func:`dump_config`, not by
    a user). Before each model family had its own keys, every model's section held the keys of
    all families (their defaults); those of other families never had any effect on the model, so
    they are dropped here, and directories trained then load as they always did. Unknown keys
    (no family's) are kept, and refused as in any config."""
    raw = read_config_file(path)
    model = raw.get("model")
    family = _family(model)
    if family in MODEL_FAMILIES:
        own, everyone = MODEL_FAMILIES[family].model_fields, _section_keys()["model"]
        raw["model"] = {k: v for k, v in model.items() if k in own or k not in everyone}
    return raw


def load_saved_config(path: str | Path) -> Config:
    """The config of a model directory (``MODEL_DIR/config.yaml``), read by :func:`read_saved_config`."""
    return from_dict(read_saved_config(path), str(path))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
