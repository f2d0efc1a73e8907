# The README's two commands are `make demo` and `make test`; both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRIAL_JOBS ?= 2

.PHONY: install test demo run clean

install: $(STAMP)

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

clean:
	rm -rf $(VENV) _trial_temp* build dist *.egg-info
