"""One generation request, from its JSON to its results: the search settings it resolves to,
its inputs as source ids within the limits, the batch key it is grouped by, and the response."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from pydantic import ValidationError

from ..config import Invalid, SearchConfig
from ..data.corpus import not_text
from ..data.dataset import pad_sources
from ..search import Hypothesis, PathDecoder, paths_per_input, rank_samples
from ..translate import Translator, ranking_score
from .errors import ApiError, JSON_NAMES
from .limits import Limits
from .schemas import Attention, GenerateRequest, GenerateResponse, ModelInfo, Output, Result, SearchDefaults

ATTENTION_LAYER = -1  # the weights returned: the last attention (a Transformer's last decoder layer)


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to decode in one batch."""

    model: str
    search: str  # the SearchConfig as JSON
    attention: bool


@dataclass
class Generation:
    key: BatchKey
    texts: list[str]
    sources: list[list[int]]


def search_config(tr: Translator, limits: Limits, body: GenerateRequest) -> SearchConfig:
    """The model's search settings with the request's on top, checked as the config file is,
    and within the server's limits; a bad combination is a 422 naming the request's field."""
    given = body.search_settings()
    try:
        cfg = SearchConfig.model_validate({**tr.cfg.search.model_dump(), **given})
    except ValidationError as e:
        err = e.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        name = cause.key if isinstance(cause, Invalid) else str(err["loc"][0]) if err["loc"] else "search"
        raise ApiError(422, f"{JSON_NAMES.get(name, name)}: {err['msg'].removeprefix('Value error, ')}") from None
    for field, value, most, why in (
        ("beam_size", cfg.beam_size, limits.max_beam, "the server's --max-beam"),
        ("n_best", cfg.nbest, limits.max_beam, "the server's --max-beam"),
        ("max_output_tokens", cfg.max_output_tokens, tr.cfg.search.max_output_tokens, "the model's default"),
    ):
        if value > most:
            raise ApiError(422, f"{field}: {value} is over the limit of {most} ({why})", "limit_exceeded")
    return cfg


def prepare(models: Mapping[str, Translator], limits: Limits, body: GenerateRequest) -> Generation:
    """Check a request against the models and the limits; its inputs as source ids."""
    name = body.model if body.model is not None else next(iter(models))
    tr = models.get(name)
    if tr is None:
        raise ApiError(404, f"model: no model named {name!r} is served (served: {', '.join(models)})", "unknown_model")
    if len(body.inputs) > limits.max_inputs:
        raise ApiError(422, f"inputs: {len(body.inputs)} inputs, over the limit of {limits.max_inputs} per request "
                            f"(--max-inputs)", "limit_exceeded")
    for i, text in enumerate(body.inputs):
        if len(text) > limits.max_chars:
            raise ApiError(422, f"inputs[{i}]: {len(text)} characters, over the limit of {limits.max_chars} "
                                f"(--max-chars)", "limit_exceeded")
        if (bad := not_text(text)) is not None:  # what `s2s generate` and training refuse (a JSON "\u0000")
            raise ApiError(422, f"inputs[{i}]: {bad[0]} (character {bad[1]})")
    cfg = search_config(tr, limits, body)
    if body.attention and tr.attention_layers == 0:
        raise ApiError(400, f"attention: model {name!r} ({tr.family}, {tr.engine.name} engine) returns no attention "
                            f"weights; ask without \"attention\": true", "attention_unavailable")
    limit, sources = tr.input_limit(cfg), []
    for i, text in enumerate(body.inputs):
        ids = tr.src_tok.encode(text)
        if len(ids) > limit:
            if cfg.on_long_input == "refuse":
                raise ApiError(422, f"inputs[{i}]: {len(ids)} tokens, over the model's limit of {limit}",
                               "limit_exceeded")
            ids = ids[:limit]  # as `s2s generate` does under on_long_input: truncate
        sources.append(ids)
    return Generation(BatchKey(name, cfg.model_dump_json(), body.attention), list(body.inputs), sources)


@lru_cache(maxsize=256)
def _config(search: str) -> SearchConfig:
    return SearchConfig.model_validate_json(search)


def decode_batch(models: Mapping[str, Translator], key: BatchKey, sources: list[Sequence[int]]) -> list[list[Hypothesis]]:
    """Decode the inputs of a batch of requests (run in the batch worker's thread)."""
    return models[key.model].decode_ids(sources, _config(key.search), ATTENTION_LAYER if key.attention else None)


class PathStream:
    """Step-level batching of one key (the batcher's ``Stream``): each input decodes as
    :func:`~seq2seqkit.search.paths_per_input` rows of a :class:`~seq2seqkit.search.PathDecoder`
    (one greedy path, or ``n_best`` samples) and finishes with its n-best list when all have."""

    def __init__(self, decoder: PathDecoder, device: torch.device, paths: int) -> None:
        self.decoder, self.device, self.paths = decoder, device, paths
        self.done: dict[Any, list[Hypothesis]] = {}  # tag -> the finished paths of an unfinished input

    def __len__(self) -> int:
        return len(self.decoder)

    def admit(self, sources: list[Sequence[int]], tags: list[Any]) -> None:
        src, lens = pad_sources([s for s in sources for _ in range(self.paths)])
        self.decoder.admit(src.to(self.device), lens.to(self.device), [t for t in tags for _ in range(self.paths)])

    def step(self) -> list[tuple[Any, list[Hypothesis]]]:
        out = []
        for tag, hyp in self.decoder.step():
            paths = self.done.setdefault(tag, [])
            paths.append(hyp)
            if len(paths) == self.paths:
                out.append((tag, rank_samples(self.done.pop(tag))))
        return out

    def drop(self, leave: Callable[[Any], bool]) -> None:
        self.decoder.drop(leave)
        self.done = {tag: paths for tag, paths in self.done.items() if not leave(tag)}


def open_stream(models: Mapping[str, Translator], key: BatchKey) -> PathStream | None:
    """A step-level batch of ``key`` (run in the batch worker's thread); None where its search
    decodes whole batches only (beam search, or an engine other than PyTorch's)."""
    tr, cfg = models[key.model], _config(key.search)
    decoder = tr.engine.path_decoder(cfg, ATTENTION_LAYER if key.attention else None)
    return None if decoder is None else PathStream(decoder, tr.device, paths_per_input(cfg))


def score(h: Hypothesis) -> float | None:
    """The score shown: the ranking score; None where it is not a finite number."""
    value = ranking_score(h)
    return value if math.isfinite(value) else None


def attention(tr: Translator, text: str, h: Hypothesis) -> Attention | None:
    if h.attention is None:
        return None
    source, output = tr.attention_pieces(text, h)
    return Attention(source_pieces=source, output_pieces=output, weights=h.attention.float().tolist())


def respond(tr: Translator, gen: Generation, results: list[list[Hypothesis]]) -> GenerateResponse:
    out = []
    for text, hyps in zip(gen.texts, results):
        best = hyps[0]
        nbest = [Output(output=tr.tgt_tok.decode(h.tokens), score=score(h)) for h in hyps]
        out.append(Result(output=nbest[0].output, score=nbest[0].score, n_best=nbest,
                          attention=attention(tr, text, best) if gen.key.attention else None))
    return GenerateResponse(model=gen.key.model, results=out)


def model_info(name: str, tr: Translator) -> ModelInfo:
    s = tr.cfg.search
    return ModelInfo(
        name=name, family=tr.family, engine=tr.engine.name, parameters=tr.engine.num_parameters(),
        src_vocab_size=tr.src_tok.vocab_size, tgt_vocab_size=tr.tgt_tok.vocab_size, attention=tr.attention_layers > 0,
        search=SearchDefaults(beam_size=s.beam_size, n_best=s.nbest, sample=s.sample, top_k=s.top_k, top_p=s.top_p,
                              temperature=s.temperature, length_penalty=s.length_penalty,
                              max_output_tokens=s.max_output_tokens, no_repeat_ngram_size=s.no_repeat_ngram_size,
                              min_len=s.min_len, repetition_penalty=s.repetition_penalty))
