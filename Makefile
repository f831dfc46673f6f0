# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both install everything on a fresh machine first. torch is pinned to the CPU build that
# this machine's package index serves; an unpinned torch would pull GBs of CUDA wheels.
PY ?= python3
PIP = $(PY) -m pip
STAMP = build/.installed-stamp

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): setup.py pyproject.toml constraints.txt $(wildcard csrc/*/*.cpp csrc/include/actstore/*.h bindings/*.cpp)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q "setuptools>=64" wheel "pybind11>=2.12"
	$(PIP) install -q --no-build-isolation -e ".[dev,demo]" -c constraints.txt
	@mkdir -p build && touch $(STAMP)

install: $(STAMP)

# Main job: real all-MiniLM-L6-v2 activations over English text into ./demo_store, then `actstore info`.
demo: install
	rm -rf demo_store
	$(PY) -m actstore.cli demo --out demo_store

# The whole test suite (CI runs exactly this). The native extension must have built.
test: install
	ACTSTORE_REQUIRE_NATIVE=1 $(PY) -m pytest -q

# The fast tests: all but those marked slow (kill and signal trials, torchrun runs, tests over ~5 s).
test-fast: install
	ACTSTORE_REQUIRE_NATIVE=1 $(PY) -m pytest -q -m "not slow"

# ruff lint and format check (CI runs it before the tests); `make format` rewrites in place.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: install
	$(PY) benchmarks/bench_codecs.py
	$(PY) benchmarks/bench_store_io.py

clean:
	rm -rf build demo_store demo_data actstore/_C*.so *.egg-info
