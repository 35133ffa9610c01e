"""The JSON of the API: requests, responses and errors, as pydantic models (they make the
OpenAPI schema at ``/openapi.json``). Unknown keys are refused, types are not coerced
(``"5"`` is no integer), and no number may be NaN or infinite."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Request fields that set the search, by their name in SearchConfig where it differs.
SEARCH_FIELDS = {"n_best": "nbest"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class GenerateRequest(Strict):
    model: str | None = Field(None, description="a name from GET /v1/models (default: the first served model)")
    inputs: list[str] = Field(min_length=1, description="the texts to apply the model to, one output each")
    beam_size: int | None = Field(None, ge=1, description="1: greedy search; above 1: beam search")
    n_best: int | None = Field(None, ge=1, description="how many outputs per input (at most beam_size, or sample)")
    sample: bool | None = Field(None, description="sample the outputs instead of searching")
    top_k: int | None = Field(None, ge=0, description="sampling: only from the k most probable tokens (0: all)")
    top_p: float | None = Field(None, gt=0, le=1, description="sampling: only from the smallest set of probability p")
    temperature: float | None = Field(None, gt=0, le=100, description="sampling temperature")
    length_penalty: float | None = Field(None, ge=0, le=10, description="GNMT length penalty alpha of beam search")
    max_output_tokens: int | None = Field(None, ge=1, description="no output longer (at most the model's default)")
    no_repeat_ngram_size: int | None = Field(None, ge=0, description="no n-gram of this many tokens twice (0: off)")
    min_len: int | None = Field(None, ge=0, description="no output shorter than this many tokens")
    repetition_penalty: float | None = Field(None, gt=0, le=100, description="CTRL penalty on tokens already output (1: off)")
    attention: bool = Field(False, description="also return the attention weights of each best output")

    @model_validator(mode="before")
    @classmethod
    def _whole_numbers(cls, data: Any) -> Any:
        """A JSON number with no fraction (``2.0``) is an integer, as JSON Schema has it; the
        integer fields take it (strings and booleans stay refused)."""
        if not isinstance(data, dict):
            return data
        ints = [name for name, f in cls.model_fields.items() if f.annotation == (int | None)]
        return {k: int(v) if k in ints and isinstance(v, float) and v.is_integer() else v for k, v in data.items()}

    def search_settings(self) -> dict[str, object]:
        """The search settings given, by their SearchConfig names."""
        given = self.model_dump(exclude={"model", "inputs", "attention"}, exclude_none=True)
        return {SEARCH_FIELDS.get(k, k): v for k, v in given.items()}


class Attention(BaseModel):
    source_pieces: list[str]
    output_pieces: list[str]
    weights: list[list[float]] = Field(description="one row per output piece, one column per source piece")


class Output(BaseModel):
    output: str
    score: float | None = Field(description="the log-probability, length-normalised where beam search ranks by it")


class Result(Output):
    n_best: list[Output]
    attention: Attention | None


class GenerateResponse(BaseModel):
    model: str
    results: list[Result]


class SearchDefaults(BaseModel):
    beam_size: int
    n_best: int
    sample: bool
    top_k: int
    top_p: float
    temperature: float
    length_penalty: float
    max_output_tokens: int
    no_repeat_ngram_size: int
    min_len: int
    repetition_penalty: float


class ModelInfo(BaseModel):
    name: str
    family: str
    engine: str
    parameters: int
    src_vocab_size: int
    tgt_vocab_size: int
    attention: bool
    search: SearchDefaults


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Status(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
