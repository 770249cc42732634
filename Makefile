# The two commands of the README's quick start. Each installs what it needs first.
DURATION ?= 20
STATE_DIR ?= ./ingestd-demo

.PHONY: demo test bench deb

demo:
	./scripts/bootstrap.sh
	.venv/bin/ingestd demo --duration $(DURATION) --state-dir $(STATE_DIR)

test:
	./scripts/bootstrap.sh --test
	.venv/bin/python -m pytest -q

bench:
	./scripts/bootstrap.sh --test
	.venv/bin/python bench/run_all.py

# dist/ingestd_<version>_<arch>.deb (dh-virtualenv), checked by lintian; installs its own build
# dependencies and skips the build when dist/ already holds one built from the same sources.
deb:
	./packaging/build-deb.sh
