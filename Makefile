# Two entry points for a fresh machine: `make demo` and `make test` (both create .venv and install the project).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.halluc-installed

# Offline NLTK resources provided beside the project on developer and CI machines.
ifneq ($(wildcard ../shared/nltk_data),)
export NLTK_DATA := $(abspath ../shared/nltk_data)
endif

.PHONY: demo test test-slow lint install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,dpo]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/halluc demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
