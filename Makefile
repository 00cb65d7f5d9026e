# Two commands do all set-up on a fresh machine with Python 3.11, gcc and make:
#   make demo   create .venv, install udrflow, run the end-to-end demo
#   make test   create .venv, install udrflow with test extras, run the whole suite
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test install install-test ext bench lint clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=77" wheel "Cython>=3.0"
	touch $@

# Editable installs compile nothing (UDRFLOW_NO_EXT=1, see setup.py) and reuse the venv's
# setuptools and Cython (--no-build-isolation): the one compile is `make ext`'s.
$(VENV)/.installed: $(VENV)/.created pyproject.toml setup.py
	UDRFLOW_NO_EXT=1 $(PIP) install --quiet --no-build-isolation -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	UDRFLOW_NO_EXT=1 $(PIP) install --quiet --no-build-isolation -e '.[test]'
	touch $@

# Compile the Cython extensions in place, on every core: once per fresh clone, then only
# what changed (a .pyx/.h or a compiled engine module, udrflow/_compiled.py).
ext: $(VENV)/.installed
	$(PY) setup.py --quiet build_ext --inplace

install: ext
install-test: $(VENV)/.installed-test ext

demo: install
	$(VENV)/bin/udrflow demo

test: install-test
	@start=$$(date +%s); $(VENV)/bin/python -m pytest -q --durations=15; status=$$?; \
	echo "test suite wall time: $$(( $$(date +%s) - start )) s"; exit $$status

lint: install-test
	$(VENV)/bin/ruff check udrflow connectors tests benchmarks examples

bench: install
	$(PY) benchmarks/bench_log.py

clean:
	rm -rf build $(VENV) udrflow/_ext/*.c udrflow/*.c udrflow/log/*.c udrflow/views/*.c *.egg-info
	find udrflow -name '*.so' -delete
