"""Thread defaults of the stage runtimes, in a module of their own so settings can name them without
importing onnxruntime or torch (front-end processes read the settings and never load either)."""

from __future__ import annotations

# Batches smaller than this run on single-threaded onnxruntime sessions. With two intra-op threads,
# every parallel operator wakes a sleeping worker, which costs more than it saves on small tensors.
# Measured on the default model's whole graph (2-core x86_64, onnxruntime 1.32, medians of blocks of
# calls), 1 thread against 2: batch 1 0.81 vs 1.04 ms, batch 2 1.47 vs 1.74, batch 4 2.97 vs 4.26,
# batch 8 5.43 vs 5.10, batch 32 21.9 vs 15.7. Stage boundaries gain twice: the six stages of a
# batch-1 image cost 1.11x the whole graph single-threaded against 1.15x with two threads.
SINGLE_THREAD_BELOW = 8
