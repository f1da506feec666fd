"""Request bodies of the KServe v2 / Open Inference Protocol (JSON part), validated before use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    # Clients add fields of their own (Triton sends sequence and priority parameters): ignore, not fail.
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Lenient):
    name: str = Field(max_length=256)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Lenient):
    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Lenient):
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=16)
    outputs: list[RequestOutput] | None = Field(None, max_length=16)
