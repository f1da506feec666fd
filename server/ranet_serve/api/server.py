"""Run the app under uvicorn with the settings' host, port and log level.

Uvicorn turns SIGINT/SIGTERM into a graceful shutdown: it stops accepting connections, waits up to
`graceful_shutdown_seconds` for in-flight requests, then runs the lifespan's shutdown (drain batchers).
"""

from __future__ import annotations

import logging

import uvicorn

from ranet_serve.api.app import create_app
from ranet_serve.api.settings import Settings
from ranet_serve.api.store import NAME_PATTERN, VERSION_PATTERN


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def find_bundles(settings: Settings) -> list[str]:
    """`name/version` of every directory in the store holding a manifest (no loading)."""
    root = settings.model_store
    if not root.is_dir():
        return []
    return sorted(
        f"{model.name}/{version.name}"
        for model in root.iterdir()
        if model.is_dir() and NAME_PATTERN.match(model.name)
        for version in model.iterdir()
        if version.is_dir() and VERSION_PATTERN.match(version.name) and (version / "manifest.json").is_file()
    )


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_seconds),
        log_config=None,  # keep the logging configured above
    )
    uvicorn.Server(config).run()
