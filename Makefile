# Set-up commands (see README): `make up` starts the platform, `make test` runs every test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up down status test test-slow lint bench bench-loop bench-scale demo clean-venv

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# Every dependency is pinned with hashes: pip refuses anything that does not match.
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# the alerting rules' server (Debian's prometheus)
/usr/bin/prometheus:
	apt-get update && apt-get install -y prometheus

up: $(STAMP) /usr/bin/prometheus
	$(BIN)/reco data fetch
	$(BIN)/reco up

down: $(STAMP)
	$(BIN)/reco down

status: $(STAMP)
	$(BIN)/reco status

# style, the layer contracts of .importlinter, static types
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Debian packages the tests use: chromium for the browser test (Playwright drives it; it
# downloads no browser), stunnel4 for the broker's TLS front, prometheus (with promtool) for
# the alerting rules
DEBS := /usr/bin/chromium /usr/bin/stunnel4 /usr/bin/promtool
$(DEBS):
	apt-get update && apt-get install -y chromium stunnel4 prometheus

# GrowthBook's gbstats in a venv of its own: the experiment statistics' reference (its pins
# clash with ours; see tests/reference/README.md)
REFENV := var/refenv/gbstats
$(REFENV)/.installed: tests/reference/gbstats-requirements.txt
	test -x $(REFENV)/bin/python || $(PY) -m venv $(REFENV)
	$(REFENV)/bin/pip install --quiet --require-hashes --no-deps -r $<
	touch $@

test: $(STAMP) $(DEBS) $(REFENV)/.installed lint
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

bench: $(STAMP)
	$(BIN)/reco data fetch
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/analytics.py
	$(BIN)/python bench/abtest.py
	$(BIN)/python bench/spam.py
	$(BIN)/python bench/feedback_validity.py
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/extraction.py

# the platform at MovieLens-25M size (docs/scale.md; over an hour on 2 cores)
bench-scale: $(STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/scale.py

# the recorded dashboard walkthrough (the platform must be up: `make up`)
demo: $(STAMP) /usr/bin/chromium
	command -v ffmpeg >/dev/null || (apt-get update && apt-get install -y ffmpeg)
	$(BIN)/reco demo-record

bench-loop: $(STAMP)
	$(BIN)/reco data fetch
	$(BIN)/python bench/feedback.py

clean-venv:
	rm -rf $(VENV)
