"""The inference routes' paths, matched in one place: by the admission gate, the inference dispatch
and the 401 handler alike (a second spelling of these patterns would drift)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# v1 with the default model, v1 with a named model, v2 with or without a version. Path segments are
# `[^/]+`, as Starlette's `{param}` converter matches them.
_INFERENCE = re.compile(
    r"^/v1/classify$"
    r"|^/v1/models/(?P<v1_model>[^/]+)/classify$"
    r"|^/v2/models/(?P<v2_model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$"
)


@dataclass(frozen=True, slots=True)
class InferenceTarget:
    """What an inference request's path names."""

    protocol: str  # "v1" or "v2"
    model: str | None  # None: the server's default model (v1 only)
    version: str | None = None  # v2's /versions/{version}; v1 takes `version` as a knob


def match_inference(method: str, path: str) -> InferenceTarget | None:
    """The target of an inference request, or None when `method path` is not one."""
    if method != "POST":
        return None
    match = _INFERENCE.match(path)
    if match is None:
        return None
    v2_model = match.group("v2_model")
    if v2_model is not None:
        return InferenceTarget("v2", v2_model, match.group("version"))
    return InferenceTarget("v1", match.group("v1_model"))


def inference_model(method: str, path: str) -> tuple[bool, str | None]:
    """Whether `method path` is an inference request, and the model its path names (None: default)."""
    target = match_inference(method, path)
    return (False, None) if target is None else (True, target.model)
