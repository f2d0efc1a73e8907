# The README's two commands are `make demo` and `make test`; both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRIAL_JOBS ?= 2
# Playwright (test extra) drives Debian's /usr/bin/chromium; it must never fetch a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: install install-node test demo run clean bench bench-quick fuzz

# The browser client (clients/browser): `npm ci` from the committed lock file, once per
# change of it; its tests run inside the trial suite (tests/integration/test_browser_client_node.py).
NODE_DIR := clients/browser
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

install: $(STAMP) $(NODE_STAMP)

install-node: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "make: npm (Node >= 20) is needed for clients/browser" >&2; exit 1; }
	cd $(NODE_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

test: install
	$(BIN)/python -m twisted.trial --jobs=$(TRIAL_JOBS) tests

demo: install
	$(BIN)/python -m mterelay.demo

run: install
	$(BIN)/twistd -n --pidfile= mterelay

# Benchmark (docs/performance.md): direct vs a plain two-hop proxy vs the relay pair,
# with wrk; BENCH_ARGS passes options to bench/run.py (e.g. BENCH_ARGS='--profile').
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP) setup.cfg
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[bench]'
	touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-quick: install $(BENCH_STAMP)
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

# Adversarial campaign (docs/security.md): real relays, Redis, a recording upstream;
# >= 100,000 malformed inputs plus the attacks of issue 14 (~6 min on 2 cores). Not part of `make test`
# (tests/integration/test_fuzz_smoke.py runs a short version). Exit status 1 unless clean.
# FUZZ_ARGS passes options to `python -m fuzz` (e.g. FUZZ_ARGS='--seed 7 --cases 20000').
FUZZ_ARGS ?=

fuzz: install
	$(BIN)/python -m fuzz $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) _trial_temp* build dist *.egg-info $(NODE_DIR)/node_modules
