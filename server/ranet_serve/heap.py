"""Keep a process's long-lived heap out of the cyclic garbage collector's scans.

Both kinds of server process hold a large heap that lives as long as they do: the engine its models
(torch, onnxruntime, the bundles), a front-end its imports and app (FastAPI, pydantic, numpy, Pillow,
prometheus_client, the routes and schemas). A full collection walks all of it while holding the GIL,
which stops the event loop: one such collection took 116 ms under 16 concurrent requests in the
engine on the dev machine, and every request in flight waited for it. Requests only allocate
short-lived objects, which the young generations still collect; the loaded heap never needs
scanning again.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_heap() -> int:
    """Take every object alive now out of the cyclic GC's reach; returns how many.

    Unfreezes and collects first, so calling it again (the engine does after every reload) still frees
    the cycles of what was dropped since (an unloaded version).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%d long-lived objects moved out of the garbage collector's scans", frozen)
    return frozen
