# The two commands of the README's quick start. Each installs what it needs first.
DURATION ?= 20
STATE_DIR ?= ./ingestd-demo

.PHONY: demo test bench

demo:
	./scripts/bootstrap.sh
	.venv/bin/ingestd demo --duration $(DURATION) --state-dir $(STATE_DIR)

test:
	./scripts/bootstrap.sh --test
	.venv/bin/python -m pytest -q

bench:
	./scripts/bootstrap.sh --test
	.venv/bin/python bench/run_all.py
