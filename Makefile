# The README's two commands: `make serve` and `make test`. Both set up what they need first.
.PHONY: setup serve test lint typecheck unit slow bench

setup:
	./scripts/setup.sh

serve: setup
	.venv/bin/ranet serve

lint:
	.venv/bin/ruff check server tests benchmarks clients
	.venv/bin/ruff format --check server tests benchmarks clients

typecheck:
	.venv/bin/mypy

unit:
	OMP_WAIT_POLICY=passive .venv/bin/pytest -q

test: setup lint typecheck unit

slow: setup
	OMP_WAIT_POLICY=passive .venv/bin/pytest -q -m slow

bench: setup
	OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/inprocess.py
