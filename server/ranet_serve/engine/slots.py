"""The slot table: which request each image in the cascade belongs to.

Every admitted image gets a tag (a slot); cohorts carry tags, not requests, so the scheduler can
merge and split them freely. Results are filed by tag and a request is complete once all its images
have one. A failure is fanned out from the tags of the failed stage to every request with an image
among them; their other images stay in the cascade as dead rows and are dropped when met (a tag
that is no longer in the table is not live).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from ranet_serve.cascade.executor import ImageResult
from ranet_serve.engine.requests import QueuedRequest
from ranet_serve.errors import RanetServeError, StageExecutionError

logger = logging.getLogger(__name__)


class SlotTable:
    """Tag -> (request, image index); worker thread only (its size is read from other threads)."""

    def __init__(self) -> None:
        self._slots: dict[int, tuple[QueuedRequest, int]] = {}
        self._next_tag = 0

    def __len__(self) -> int:
        """Images in the cascade whose request is still waiting for them."""
        return len(self._slots)

    def is_live(self, tag: int) -> bool:
        return tag in self._slots

    def assign(self, requests: list[QueuedRequest]) -> np.ndarray:
        """Give every image of `requests` a fresh tag, in order: int64 [total images]."""
        total = sum(r.size for r in requests)
        tags = np.arange(self._next_tag, self._next_tag + total, dtype=np.int64)
        self._next_tag += total
        offset = 0
        for request in requests:
            request.first_tag = int(tags[offset]) if total else 0
            for index in range(request.size):
                self._slots[int(tags[offset + index])] = (request, index)
            offset += request.size
        return tags

    def file(self, finished: Iterable[tuple[int, ImageResult]]) -> list[QueuedRequest]:
        """File each (tag, result); returns the requests that now have every result. Tags of
        requests that already failed are ignored."""
        complete: list[QueuedRequest] = []
        for tag, result in finished:
            slot = self._slots.pop(tag, None)
            if slot is None:
                continue  # its request already failed
            request, index = slot
            if request.record(index, result):
                complete.append(request)
        return complete

    def passed(self, passed: Iterable[tuple[int, ImageResult]]) -> None:
        """Hand each (tag, result) of a watched image that went on to its request."""
        for tag, result in passed:
            slot = self._slots.get(tag)
            if slot is not None:
                slot[0].passed(slot[1], result)

    def drop(self, request: QueuedRequest) -> int:
        """Free the slots `request` still holds (answered early, or withdrawn); returns how many.

        Its images still in the cascade become dead rows, dropped when next met."""
        dropped = 0
        for tag in range(request.first_tag, request.first_tag + request.size):
            slot = self._slots.get(tag)
            if slot is not None and slot[0] is request:
                del self._slots[tag]
                dropped += 1
        return dropped

    def fail(self, tags: np.ndarray, exc: Exception) -> None:
        """Fail every request with an image among `tags` and free all of its slots.

        Errors from our own domain go out as they are; anything else becomes a
        `StageExecutionError`, so callers see one error type for "the model failed".
        """
        error = exc if isinstance(exc, RanetServeError) else StageExecutionError(f"inference failed: {exc}")
        failed: dict[int, QueuedRequest] = {}
        for tag in tags.tolist():
            slot = self._slots.get(tag)
            if slot is not None:
                failed[id(slot[0])] = slot[0]
        logger.exception("a stage failed on %d images of %d requests", tags.size, len(failed))
        for request in failed.values():
            if not request.future.done():
                request.future.set_exception(error)
        self._slots = {t: s for t, s in self._slots.items() if id(s[0]) not in failed}
