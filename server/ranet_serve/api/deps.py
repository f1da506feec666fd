"""FastAPI dependencies: what `create_app` built, taken from the app's state (no module globals)."""

from __future__ import annotations

from fastapi import Request

from ranet_serve.api.metrics import ServerMetrics
from ranet_serve.api.service import InferenceService
from ranet_serve.api.settings import Settings
from ranet_serve.api.store import ModelStore


def get_service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


def get_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> ServerMetrics:
    metrics: ServerMetrics = request.app.state.metrics
    return metrics
