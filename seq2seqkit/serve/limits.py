"""What the server accepts: limits that protect a small machine, and the batching settings.

Every limit has a flag of ``s2s serve`` of the same name (``max_inputs`` -> ``--max-inputs``).
The defaults suit a 2-core machine serving a model of tens of millions of weights.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no endless wait: inf is refused

    max_inputs: int = Field(32, ge=1)  # inputs in one request
    max_chars: int = Field(1000, ge=1)  # characters in one input
    max_body_bytes: int = Field(256 * 1024, ge=1)  # a request body, in bytes
    max_queue: int = Field(64, ge=1)  # requests waiting for the model; one more gets 429 with Retry-After
    timeout_s: float = Field(30.0, gt=0)  # a request not answered by then gets 504
    max_beam: int = Field(16, ge=1)  # the largest beam_size (and n_best) a request may ask for
    # step: requests join and leave the running batch between decoding steps (greedy, sampling;
    # beam search batches by request); request: a batch decodes to its end; off: one request at a time
    batching: Literal["step", "request", "off"] = "step"
    max_wait_ms: float = Field(5.0, ge=0)  # how long the first request of a request-level batch waits for others
    max_batch_tokens: int = Field(4096, ge=1)  # source tokens (EOS included) that close a batch / fill the running one
    # step: newcomers join a running batch once the inputs waiting number join_fraction x its rows
    # (0: before every step), or after join_wait_steps steps of waiting
    join_fraction: float = Field(0.0, ge=0, le=1)
    join_wait_steps: int = Field(4, ge=1)

    @field_validator("max_wait_ms")
    @classmethod
    def _wait_within_timeout(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("timeout_s")  # absent if it was refused itself
        if timeout is not None and value >= 1000 * timeout:
            raise ValueError(f"{value:g} ms is not shorter than --timeout-s {timeout:g} s: the first request of a "
                             f"request-level batch would get 504 before its batch starts")
        return value

    @field_validator("batching", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        """``True``/``False`` (as before there were modes): the default mode, or off."""
        return ("step" if value else "off") if isinstance(value, bool) else value
