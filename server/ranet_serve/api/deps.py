"""FastAPI dependencies: what `create_app` built, taken from the app's state (no module globals)."""

from __future__ import annotations

from fastapi import Request

from ranet_serve.api.service import InferenceService
from ranet_serve.engine.catalog import Catalog
from ranet_serve.engine.client import EngineClient
from ranet_serve.metrics import RequestMetrics
from ranet_serve.settings import Settings


def get_service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


def get_engine(request: Request) -> EngineClient:
    engine: EngineClient = request.app.state.engine
    return engine


def get_catalog(request: Request) -> Catalog:
    """What the engine serves at this moment (one snapshot per request)."""
    return get_engine(request).catalog


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> RequestMetrics:
    metrics: RequestMetrics = request.app.state.metrics
    return metrics
