"""The aiohttp wire under the client: the same answers, errors and load reports as httpx's own."""

from __future__ import annotations

import asyncio
import socket

import pytest
from ranet_client import AsyncRanetClient, ConnectionFailedError, InvalidInputError, NotFoundError
from ranet_client.aiohttp_transport import AiohttpTransport
from ranet_client.image_sets import Sample
from ranet_client.load import LoadConfig, run_load_sync

pytest.importorskip("aiohttp")  # the `fast` extra; scripts/setup.sh installs it


def _client(url: str, wire: str) -> AsyncRanetClient:
    return AsyncRanetClient(url, transport=AiohttpTransport(4) if wire == "aiohttp" else None)


def test_classify_answers_and_errors_are_the_same_on_both_wires(
    server_url: str, samples: list[Sample]
) -> None:
    async def answers(wire: str) -> list[object]:
        async with _client(server_url, wire) as client:
            results = [
                (r.class_index, r.exit, r.flops, r.confidence, tuple(r.top_k))
                for s in samples[:4]
                for r in (await client.classify(s.data, top_k=2)).results
            ]
            batch = await client.classify([s.data for s in samples[:3]], encoding="json")
            with pytest.raises(NotFoundError) as missing:
                await client.classify(samples[0].data, model="no-such-model")
            with pytest.raises(InvalidInputError) as invalid:
                await client.classify(b"definitely not an image")
            return [
                results,
                [(r.class_index, r.exit) for r in batch.results],
                (missing.value.status, missing.value.code),
                (invalid.value.status, invalid.value.code, invalid.value.message),
            ]

    assert asyncio.run(answers("aiohttp")) == asyncio.run(answers("httpx"))


def test_no_server_is_the_same_connection_error_on_both_wires() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"

    async def refused(wire: str) -> tuple[type, str]:
        async with _client(url, wire) as client:
            with pytest.raises(ConnectionFailedError) as caught:
                await client.health()
            return type(caught.value), caught.value.code

    assert (
        asyncio.run(refused("aiohttp"))
        == asyncio.run(refused("httpx"))
        == (
            ConnectionFailedError,
            "connection_error",
        )
    )


def test_the_load_generator_reports_alike_on_both_wires(server_url: str, samples: list[Sample]) -> None:
    reports = {
        wire: run_load_sync(LoadConfig(url=server_url, requests=24, concurrency=4, wire=wire), samples)
        for wire in ("aiohttp", "httpx")
    }
    for report in reports.values():
        assert (report.requests_sent, report.requests_ok, report.requests_failed) == (24, 24, 0)
    assert reports["aiohttp"].exit_counts == reports["httpx"].exit_counts  # the same images, the same exits
    assert reports["aiohttp"].accuracy == reports["httpx"].accuracy
    with pytest.raises(ValueError, match="wire"):
        LoadConfig(url=server_url, wire="carrier-pigeon").validated()  # type: ignore[arg-type]
