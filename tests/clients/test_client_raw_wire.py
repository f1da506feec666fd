"""The load generator's raw wire (pre-encoded HTTP/1.1 bytes, `ranet_client.rawhttp`): the same reports,
errors and predictions as the client's own wire, for RANet Serve and for a plain one-image server."""

from __future__ import annotations

import asyncio
import socket

import pytest
from ranet_client.errors import BudgetError, ConnectionFailedError, NotFoundError
from ranet_client.image_sets import Sample
from ranet_client.load import BudgetChoice, LoadConfig, run_load_sync
from ranet_client.targets import RawTarget

from helpers.server import RunningServer


def test_the_load_generator_reports_alike_on_the_raw_wire(server_url: str, samples: list[Sample]) -> None:
    mix = (BudgetChoice("deep", {"confidence": "1"}, 0.5), BudgetChoice("default", {}, 0.5))
    reports = {
        wire: run_load_sync(
            LoadConfig(url=server_url, requests=40, concurrency=4, batch=2, wire=wire, mix=mix), samples
        )
        for wire in ("raw", "aiohttp")
    }
    raw, reference = reports["raw"], reports["aiohttp"]
    assert (raw.requests_sent, raw.requests_ok, raw.requests_failed) == (40, 40, 0)
    assert raw.images_ok == 80
    assert raw.exit_counts == reference.exit_counts  # the same images and budgets, the same exits
    assert raw.accuracy == reference.accuracy
    assert raw.total_flops == reference.total_flops
    assert raw.server_queue_ms_mean is not None


def test_raw_errors_are_the_client_errors(server_url: str, samples: list[Sample]) -> None:
    async def scenario() -> None:
        target = RawTarget(server_url, ranet=True)
        try:
            with pytest.raises(BudgetError) as budget:
                await target.classify([samples[0].data], {"max_flops": "1"})
            assert budget.value.status == 422 and budget.value.code == "invalid_budget"
            missing = RawTarget(server_url, ranet=True, model="nope")
            with pytest.raises(NotFoundError):
                await missing.classify([samples[0].data], {})
            await missing.aclose()
            answer = await target.classify([samples[0].data, samples[1].data], {"confidence": "1"})
            assert [p.exit for p in answer.predictions] == [5, 5]  # the tiny bundle's last exit
        finally:
            await target.aclose()

    asyncio.run(scenario())


def test_no_server_is_a_connection_error_on_the_raw_wire(samples: list[Sample]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        target = RawTarget(f"http://127.0.0.1:{port}", ranet=True)
        with pytest.raises(ConnectionFailedError):
            await target.classify([samples[0].data], {})
        await target.aclose()

    asyncio.run(scenario())


def test_the_raw_wire_refuses_what_it_cannot_speak(ranet_server: RunningServer) -> None:
    with pytest.raises(ValueError, match="plain http"):
        LoadConfig(url="https://example.org", wire="raw").validated()
    plain = RawTarget(ranet_server.url, ranet=False, path="/predict")
    with pytest.raises(ValueError, match="one image"):
        asyncio.run(plain.classify([b"a", b"b"], {}))
