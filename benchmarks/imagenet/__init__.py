"""The parts of benchmark step 12, serving at ImageNet scale (issue 21); `benchmarks/imagenet_scale.py`
runs them in order and writes the results.

One module per job, named by what it does (the letters are the steps of imagenet_scale.py's docstring):

- `checkpoint`: a. the model with random weights, batch norm re-estimated, saved in the official format;
- `ranet_cli`: b, c. `ranet export` and `ranet verify` in child processes, measured and parsed;
- `server`: d. `ranet serve --model-store` timed to ready, the RSS of its processes;
- `photos`: e, f. photo-like JPEGs and what decoding them costs, full decode vs JPEG draft mode;
- `classify`: e, h. one image over v1 (multipart) or v2 (binary); the photo runs, per-exit times;
- `budget`: g. a stated exit mix by `max_flops` against full depth, realised speedup vs FLOPs ratio;
- `projection`: h. what a GPU would do, from the CPU figures and stated assumptions;
- `bars`: issue 21's bars, judged from the figures (run_all.py's goal table);
- `report`: the step's Markdown section of REPORT.md.

The scripts in benchmarks/ import each other as top-level modules (benchmarks/ and benchmarks/peers/ on
sys.path); this package is imported the same way, as `imagenet`. Heavy imports (torch, httpx, the load
generator, the other benchmark scripts) stay inside the functions that need them, so run_all.py can
import the bars without them.
"""
