"""Survivor parking: where the survivors of a stage wait to run their next stage with others.

After each exit a batch shrinks, so on its own a batch would run its late stages at a handful of
images, paying each stage's fixed cost per call for very little work. With `rebatch_delay` set, the
survivors of a stage are parked at the next stage instead, and the parked survivors of several
batches run that stage together once they fill a batch, once the oldest has waited `rebatch_delay`,
or as soon as the worker has nothing else to do (so at low load nobody waits). With `rebatch_delay`
None parked survivors are always ready, so every batch runs through all its stages before the next
batch starts.

Which ready survivors run first: earliest deadline first, across stages and batches (every row
carries its request's deadline; a request without `deadline_ms` has the server's request timeout,
so it sorts after every tighter one). Between equal deadlines the deepest stage runs first, which
finishes requests soonest, and within a stage the survivors parked first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ranet_serve.cascade.arrays import StageArrays
from ranet_serve.cascade.executor import Cohort, merge_cohorts


@dataclass
class _Parked:
    cohort: Cohort
    since: float  # time.monotonic() when parked
    deadline: float  # the earliest deadline among its rows (inf: none)


class SurvivorParking:
    """Parked cohorts per stage; worker thread only."""

    def __init__(
        self, num_stages: int, max_batch_size: int, rebatch_delay: float | None, arrays: StageArrays
    ):
        if rebatch_delay is not None and rebatch_delay < 0:
            raise ValueError(f"rebatch_delay must be >= 0 seconds or None, got {rebatch_delay}")
        self.max_batch_size = max_batch_size
        self.rebatch_delay = rebatch_delay
        self._arrays = arrays
        self._parked: list[list[_Parked]] = [[] for _ in range(num_stages)]

    def __bool__(self) -> bool:
        """Whether any survivor is parked."""
        return any(self._parked)

    def park(self, cohort: Cohort) -> None:
        """Survivors wait at `cohort.stage`, the next stage they run."""
        parked = self._parked[cohort.stage]
        entry = _Parked(cohort, time.monotonic(), cohort.earliest_deadline)
        # Kept in deadline order (stable: equal deadlines stay in parking order); a handful per stage.
        at = len(parked)
        while at > 0 and parked[at - 1].deadline > entry.deadline:
            at -= 1
        parked.insert(at, entry)

    def ready_stage(self, idle: bool) -> int | None:
        """The stage whose parked survivors should run now, if any: among the ready ones, the one
        holding the earliest deadline (the deepest on a tie). With `idle` (no request is waiting for
        the worker) any parked stage is ready."""
        now = time.monotonic()
        chosen: int | None = None
        chosen_deadline = math.inf
        for stage in range(len(self._parked) - 1, 0, -1):
            parked = self._parked[stage]
            if not parked:
                continue
            if (
                idle
                or self.rebatch_delay is None
                or sum(p.cohort.size for p in parked) >= self.max_batch_size
                or now - min(p.since for p in parked) >= self.rebatch_delay
            ):
                deadline = min(p.deadline for p in parked)
                if chosen is None or deadline < chosen_deadline:
                    chosen, chosen_deadline = stage, deadline
        return chosen

    def unpark(self, stage: int, is_live: Callable[[int], bool]) -> Cohort | None:
        """Up to `max_batch_size` of the survivors parked at `stage`, earliest deadline first, merged.

        Rows whose tag is no longer live (their request already failed) are dropped on the way: their
        work is no longer wanted. None when nothing live was parked there.
        """
        parked = self._parked[stage]
        taken: list[Cohort] = []
        size = 0
        while parked and (not taken or size + parked[0].cohort.size <= self.max_batch_size):
            cohort = self._live_rows(parked.pop(0).cohort, is_live)
            if cohort is not None:
                taken.append(cohort)
                size += cohort.size
        return merge_cohorts(taken, self._arrays) if taken else None

    def _live_rows(self, cohort: Cohort, is_live: Callable[[int], bool]) -> Cohort | None:
        live = np.fromiter((is_live(int(t)) for t in cohort.tags), dtype=bool, count=cohort.size)
        if live.all():
            return cohort
        if not live.any():
            return None
        return cohort.rows(np.nonzero(live)[0], self._arrays)
