# The README's two commands: `make serve` and `make test`. Both set up what they need first.
.PHONY: setup serve test lint typecheck unit slow bench docs gpu-check gpu-rehearsal

setup:
	./scripts/setup.sh

serve: setup
	.venv/bin/ranet serve

lint:
	.venv/bin/ruff check server tests benchmarks clients scripts
	.venv/bin/ruff format --check server tests benchmarks clients scripts

typecheck:
	.venv/bin/mypy

unit:
	OMP_WAIT_POLICY=passive .venv/bin/pytest -q

test: setup lint typecheck unit

slow: setup
	OMP_WAIT_POLICY=passive .venv/bin/pytest -q -m slow

# Every benchmark (in process, HTTP, against TorchServe and FastAPI) into benchmarks/REPORT.md;
# setup_bench.sh first installs what the peers need (Java 17, the `bench` extra) when missing.
bench: setup
	./benchmarks/setup_bench.sh
	OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/run_all.py --require-torchserve

# The settings table in docs/operations.md, generated from the Settings model (a test fails when stale).
docs:
	.venv/bin/python -m ranet_serve.settings_doc docs/operations.md

# On a CUDA machine: set up the GPU path (.gpuwheels/ from scripts/gpu_wheels.py, else a registry), run
# the GPU tests and a short GPU benchmark into benchmarks/GPU_REPORT.md, in under 8 minutes. Without a
# CUDA device: one line, exit 0. No `setup` first: the GPU machine has no registry for scripts/setup.sh.
gpu-check:
	@bash scripts/gpu_check.sh

# Without a GPU: the GPU check's last device call, rehearsed in an environment built like the GPU
# machine's image (CPython 3.12, torch 2.11; about 3 GB downloaded once), with the CPU in place of CUDA.
gpu-rehearsal: setup
	bash scripts/gpu_rehearsal.sh
