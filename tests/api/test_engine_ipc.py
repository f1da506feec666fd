"""The engine across processes, piece by piece: frames, page pools, and a `RemoteEngine` talking to a
real `EngineServer` over a Unix socket (both in this test's event loop, so nothing is timed)."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from helpers.bundles import make_store
from helpers.server import Faults, controlled_factory
from ranet_serve.cascade.policy import Budget
from ranet_serve.engine import messages as m
from ranet_serve.engine.core import Engine, EngineRequest
from ranet_serve.engine.process import STATUS_NAME, EngineServer, _Connection
from ranet_serve.engine.records import EngineResult, ExitEvent
from ranet_serve.engine.registry import RuntimeFactory, default_runtime_factory
from ranet_serve.engine.remote import RemoteEngine
from ranet_serve.engine.shm import PagePool, PoolReader, StatusBlock
from ranet_serve.engine.transport import FrameProtocol, frame
from ranet_serve.errors import BudgetError, ModelNotFoundError, NotReadyError, OverloadedError
from ranet_serve.metrics import EngineMetrics
from ranet_serve.settings import Settings


def test_frames_are_reassembled_however_the_bytes_arrive() -> None:
    got: list[bytes] = []
    protocol = FrameProtocol(got.append, lambda exc: None)
    payloads = [b"a", b"", b"x" * 1000, m.encoder.encode(m.Cancel(7))]
    stream = b"".join(frame(p) for p in payloads)
    for size in (1, 3, 7, len(stream)):
        got.clear()
        for start in range(0, len(stream), size):
            protocol.data_received(stream[start : start + size])
        assert got == payloads
    assert m.to_engine.decode(got[-1]) == m.Cancel(7)


def test_page_pool_hands_out_pages_until_full_and_the_engine_reads_them_back(tmp_path: Path) -> None:
    pool = PagePool(tmp_path / "pool-1-12", page_floats=12, pages=5)
    first = np.arange(36, dtype=np.float32).reshape(3, 1, 3, 4)
    pages = pool.put(first)
    assert pages is not None and len(set(pages)) == 3 and pool.free_pages == 2
    assert pool.put(np.zeros((3, 1, 3, 4), np.float32)) is None  # only 2 left: the caller goes inline
    reader = PoolReader(tmp_path)
    np.testing.assert_array_equal(reader.take("pool-1-12", pages, first.shape), first)
    pool.release(pages)
    assert pool.free_pages == 5
    with pytest.raises(ValueError):
        reader.take("../etc", (0,), (1, 12))
    pool.close()
    assert not (tmp_path / "pool-1-12").exists()


@asynccontextmanager
async def engine_pair(
    store: Path,
    run_dir: Path,
    pool_bytes: int,
    runtime_factory: RuntimeFactory = default_runtime_factory,
    **overrides: object,
) -> AsyncIterator[tuple[EngineServer, RemoteEngine]]:
    settings = Settings(model_store=store, default_model="tiny", device="cpu", threads=1, **overrides)
    StatusBlock(run_dir / STATUS_NAME, create=True)
    engine = Engine(settings, EngineMetrics(CollectorRegistry()), runtime_factory)
    server = EngineServer(engine, CollectorRegistry(), run_dir)
    await server.start()
    remote = RemoteEngine(run_dir, pool_bytes)
    await remote.start()
    try:
        while not remote.catalog.ready:  # the catalog arrives after the engine's load
            await asyncio.sleep(0.01)
        yield server, remote
    finally:
        await remote.close()
        await server.stop()


def images_for(remote: RemoteEngine, count: int) -> np.ndarray:
    spec = remote.catalog.find("tiny").require_manifest().input
    rng = np.random.default_rng(count)
    return rng.standard_normal((count, spec.channels, spec.size, spec.size)).astype(np.float32)


@pytest.mark.parametrize("pool_bytes", [1 << 20, 0], ids=["shared-pages", "inline"])
def test_remote_results_equal_the_engine_run_in_process(
    tiny_bundle_dir: Path, tmp_path: Path, pool_bytes: int
) -> None:
    store = make_store(tmp_path / "store", tiny_bundle_dir)

    async def scenario() -> None:
        async with engine_pair(store, tmp_path, pool_bytes) as (server, remote):
            images = images_for(remote, 5)
            request = EngineRequest(model="tiny", budget=Budget(confidence=1.0), top_k=2)
            remote_result, local_result = await asyncio.gather(
                remote.infer(request, images),
                asyncio.wrap_future(server.engine.submit(request, torch.from_numpy(images.copy()))),
            )
            assert [i.exit for i in remote_result.images] == [i.exit for i in local_result.images]
            for a, b in zip(remote_result.images, local_result.images, strict=True):
                assert a.class_index == b.class_index and a.top_k[0][0] == b.top_k[0][0]
                assert a.confidence == pytest.approx(b.confidence, abs=1e-6)
            assert remote_result.version == "1" and remote_result.operating_point
            if pool_bytes:  # every page came back with the answer
                (pool,) = remote._pools.values()
                assert pool.free_pages == pool.pages

    asyncio.run(scenario())


def test_a_streamed_request_hears_every_exit_across_processes_before_its_answer(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "store", tiny_bundle_dir)

    async def scenario() -> None:
        async with engine_pair(store, tmp_path, 1 << 20) as (_, remote):
            images = images_for(remote, 3)
            heard: list[tuple[ExitEvent, bool]] = []
            request = EngineRequest(model="tiny", budget=Budget(confidence=1.0), stream=True)
            waiting = asyncio.ensure_future(
                remote.infer(request, images, lambda e: heard.append((e, waiting.done())))
            )
            result = await waiting
            assert not any(answered for _, answered in heard)  # every event came before the answer
            last = 5  # the tiny bundle's last exit
            for image in range(3):
                mine = [(e.result.exit, e.final) for e, _ in heard if e.image == image]
                assert mine == [(k, k == last) for k in range(last + 1)]
            finals = [e.result for e, _ in sorted(heard, key=lambda h: h[0].image) if e.final]
            assert finals == list(result.images)
            assert remote._listeners == {}

    asyncio.run(scenario())


def test_a_withdrawn_request_stops_in_the_engine_process_at_the_next_stage(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "store", tiny_bundle_dir)
    faults = Faults()

    async def scenario() -> None:
        async with engine_pair(store, tmp_path, 1 << 20, controlled_factory(faults)) as (server, remote):
            faults.gate.clear()
            faults.hold_stage = 2  # after the warm-up, which runs every stage at load
            request = EngineRequest(model="tiny", budget=Budget(confidence=1.0), stream=True)
            heard: list[ExitEvent] = []
            waiting = asyncio.ensure_future(remote.infer(request, images_for(remote, 2), heard.append))
            assert await asyncio.to_thread(faults.held.wait, 30)
            while not heard:  # exit 0 was reached before the hold; its event crosses the pipe
                await asyncio.sleep(0.005)
            waiting.cancel()
            (connection,) = server.connections
            while not all(future.cancelled() for future in connection.pending.values()):
                await asyncio.sleep(0.005)  # until the engine has read the Cancel message
            faults.gate.set()
            metrics = server.engine.metrics
            while metrics.cancelled.labels("tiny", "cascade")._value.get() < 1:
                await asyncio.sleep(0.005)
            stages = {
                s.labels["stage"]: s.value
                for family in metrics.batch_size.collect()
                for s in family.samples
                if s.name.endswith("_count")
            }
            assert stages["2"] == 1 and stages.get("3", 0) == 0
            # What arrived before the cancel is in order and before stage 2 (the exit-1 event may still
            # have been on its way when the listener went: that is fine).
            exits = [e.result.exit for e in heard]
            assert exits and set(exits) <= {0, 1} and exits == sorted(exits)
            with pytest.raises(asyncio.CancelledError):
                await waiting

    asyncio.run(scenario())


def test_engine_errors_arrive_as_the_same_domain_errors(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", tiny_bundle_dir)

    async def scenario() -> None:
        async with engine_pair(store, tmp_path, 1 << 20, max_queue_size=1) as (_, remote):
            images = images_for(remote, 1)
            with pytest.raises(BudgetError) as budget:
                await remote.infer(EngineRequest(model="tiny", budget=Budget(max_flops=1.0)), images)
            assert budget.value.details["cheapest_exit_flops"] > 1
            with pytest.raises(ModelNotFoundError):
                await remote.infer(EngineRequest(model="tiny", version="9"), images)
            # a full queue sheds: many requests at once against a one-request queue
            outcomes = await asyncio.gather(
                *(remote.infer(EngineRequest(model="tiny"), images) for _ in range(16)),
                return_exceptions=True,
            )
            shed = [o for o in outcomes if isinstance(o, OverloadedError)]
            assert shed and shed[0].details["reason"] == "queue_full" and shed[0].retry_after_seconds > 0

    asyncio.run(scenario())


def test_requests_in_flight_fail_with_503_when_the_engine_goes_away(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "store", tiny_bundle_dir)

    async def scenario() -> None:
        async with engine_pair(store, tmp_path, 1 << 20) as (server, remote):
            images = images_for(remote, 2)
            waiting = asyncio.ensure_future(remote.infer(EngineRequest(model="tiny"), images))
            await asyncio.sleep(0)  # the request is sent
            for connection in list(server.connections):  # the engine's end of the socket goes
                assert connection.protocol.transport is not None
                connection.protocol.transport.abort()
            with pytest.raises(NotReadyError):
                await waiting
            assert not remote.catalog.loaded  # readiness answers 503 until the engine is back
            (pool,) = remote._pools.values()
            assert pool.free_pages == pool.pages
            with pytest.raises(NotReadyError):
                await remote.infer(EngineRequest(model="tiny"), images)
            while not remote.catalog.ready:  # it reconnects by itself
                await asyncio.sleep(0.01)
            assert len((await remote.infer(EngineRequest(model="tiny"), images)).images) == 2

    asyncio.run(scenario())


def test_shed_notices_reach_the_engine_and_queued_counts_come_back(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "store", tiny_bundle_dir)

    async def scenario() -> None:
        async with engine_pair(store, tmp_path, 1 << 20) as (server, remote):
            heard: list[tuple[str, int]] = []
            arrived = asyncio.Event()

            def shed(model: str, count: int = 1) -> None:
                heard.append((model, count))
                arrived.set()

            server.engine.shed = shed  # type: ignore[method-assign]
            for _ in range(3):
                remote.shed("tiny")
            await asyncio.wait_for(arrived.wait(), 10)
            assert heard == [("tiny", 3)]  # one message for the burst
            server.status.publish(5, 0.25)
            assert remote.queued_requests() == 5

    asyncio.run(scenario())


def test_the_front_end_keeps_only_the_manifests_of_the_current_catalog(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    from ranet_serve.export.bundle import load_bundle

    manifest = load_bundle(tiny_bundle_dir).manifest
    remote = RemoteEngine(tmp_path, 0)

    def catalog(version: str) -> m.Catalog:
        renamed = manifest.model_copy(update={"version": version}).model_dump_json().encode()
        return m.Catalog(True, False, (m.CatalogVersion("tiny", version, "ready", renamed),))

    for version in ("1", "2", "3"):  # three reloads, each serving one new version
        remote.catalog = remote._catalog(catalog(version))
        assert remote.catalog.find("tiny").require_manifest().version == version
    assert len(remote._manifests) == 1
    first = remote.catalog.find("tiny").manifest
    remote.catalog = remote._catalog(catalog("3"))  # unchanged: parsed once, reused
    assert remote.catalog.find("tiny").manifest is first


def test_answers_finished_on_many_threads_each_reach_the_loop_once_in_few_wake_ups() -> None:
    """The worker thread queues finished requests and wakes the loop once per burst: every answer is
    delivered exactly once, whatever the interleaving of finishes and drains."""
    answered: list[int] = []
    wake_ups = 0

    async def scenario() -> None:
        nonlocal wake_ups
        connection = _Connection.__new__(_Connection)  # the queueing half only: no server, no socket
        connection.loop = asyncio.get_running_loop()
        connection._finished = deque()
        connection._drain_lock = threading.Lock()
        connection._drain_scheduled = False
        drain = connection._drain

        def counted_drain() -> None:
            nonlocal wake_ups
            wake_ups += 1
            drain()

        connection._drain = counted_drain  # type: ignore[method-assign]
        connection._answer = lambda request_id, future: answered.append(request_id)  # type: ignore[method-assign]
        done: Future[EngineResult] = Future()

        def finish_many(first: int) -> None:
            for request_id in range(first, first + 500):
                connection._finish(request_id, done)

        threads = [threading.Thread(target=finish_many, args=(k * 500,)) for k in range(4)]
        for thread in threads:
            thread.start()
        async with asyncio.timeout(30):
            while len(answered) < 2000:
                await asyncio.sleep(0)  # the loop runs the drains the threads scheduled
        for thread in threads:
            thread.join()

    asyncio.run(scenario())
    assert sorted(answered) == list(range(2000))
    assert 1 <= wake_ups < 2000
