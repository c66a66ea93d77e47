.PHONY: setup test lint quickstart bench

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/mypy
	.venv/bin/mkdocs build --strict --quiet
	.venv/bin/python -m pytest -q

quickstart:
	bash scripts/quickstart.sh

bench: setup
	bash benchmarks/run.sh
