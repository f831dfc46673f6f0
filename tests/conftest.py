"""Test-wide set-up.

- Layout: tests mirror the code (ops/test_<op>.py, store/, loader/, capture/, models/, sae/,
  analysis/, cli/, benchmarks/). No test folder has an ``__init__.py``: pytest puts each
  test's folder on ``sys.path`` and imports it by its basename, so basenames are unique
  across tests/ (pytest stops on a clash) and no folder name (``models``, ``analysis``,
  ``benchmarks``) becomes a package that could shadow another. Shared code lives in the one
  package, ``helpers/`` (this file's folder is on ``sys.path``): ``from helpers.x import ...``;
  its scripts run as subprocesses by path (``helpers.paths.HELPERS``).
- Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter; it must be
  switched on before any kernel module is imported, hence at conftest import.
- ``device`` fixture: the device kernel tests run on (tests/helpers/device.py).
- Markers (registered in pyproject.toml): ``gpu`` selects the tests that run on the GPU
  when one is present (``pytest -m gpu``, benchmarks/gpu_session.sh); ``slow`` the long
  ones (``make test-fast`` deselects them).
- ``make test`` runs the suite on pytest-xdist workers (``-n 3 --dist worksteal``): the slow tests are
  handed out first (an idle worker steals half of another's queue), and each worker gives torch its share of the cores.
- ``s3_server`` (one moto S3 server for the whole run, started by the controller and shared by
  every worker, tests/helpers/s3.py) and ``s3_url`` (a fresh ``s3://`` prefix in its bucket, with
  the environment pointing actstore at it).
- Subprocess-heavy tests start their Python children through ``helpers.zygote`` (a fork server
  with torch and numpy imported): real processes, about two seconds cheaper each.
- ``ACTSTORE_SLOW_SAMPLE=F`` (0 < F <= 1) keeps a fraction F of the ``slow`` tests, chosen by a
  hash of each test's id and ``ACTSTORE_SLOW_SEED`` (default: the checked-out commit), so
  successive commits cover different halves and a failing sample reruns with the same seed;
  the header says which seed and how many were kept. Neither ``make test`` nor ``.ci/run`` samples:
  both run every test.
- Peer packages (sae-lens, sparsify, nnsight, dictionary-learning, circuit-tracer, ...) are
  skipped through ``helpers.peers.need``, never a bare ``importorskip`` (tests/test_peers.py
  checks); ``ACTSTORE_REQUIRE_PEERS=1`` (``make test``, so CI) turns a missing peer into a
  failure, a collection error for a module-level one.
- ``ACTSTORE_REQUIRE_GPU=1`` makes a run without CUDA a usage error, so that a GPU session
  cannot pass on the interpreter by mistake.
"""

import hashlib
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch

from helpers.device import DEVICE
from helpers.s3 import BUCKET, MotoServer, SharedMoto, fresh_url, s3_env

if DEVICE != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (make test runs several workers), each worker gets its share of the cores
# for torch's intra-op threads, and so do the subprocesses it starts (OMP_NUM_THREADS): workers
# that each spun one OpenMP thread per core oversubscribed the machine.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    torch.set_num_threads(_THREADS)


# The endpoint of the run's one moto server, set by the controller for its xdist workers.
MOTO_ENV = "ACTSTORE_TEST_MOTO_ENDPOINT"


def pytest_configure(config):
    if os.environ.get("ACTSTORE_REQUIRE_GPU") == "1" and DEVICE != "cuda":
        raise pytest.UsageError("ACTSTORE_REQUIRE_GPU=1 but torch sees no CUDA device: run on the GPU machine")
    # One moto server per run: the controller starts it without waiting (it comes up while the
    # workers start and collect) and workers inherit the endpoint through the environment.
    if not hasattr(config, "workerinput") and MOTO_ENV not in os.environ and importlib.util.find_spec("moto"):
        config._actstore_moto = MotoServer(wait=False)
        os.environ[MOTO_ENV] = config._actstore_moto.endpoint


def pytest_unconfigure(config):
    server = getattr(config, "_actstore_moto", None)
    if server is not None:
        server.stop()
        os.environ.pop(MOTO_ENV, None)


def _slow_seed() -> str:
    seed = os.environ.get("ACTSTORE_SLOW_SEED")
    if seed:
        return seed
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    return head.stdout.strip() or "0"


def pytest_collection_modifyitems(config, items):
    # Slow tests first (a stable sort, the same on every xdist worker): `make test` hands tests to
    # workers in this order, so the long kill and subprocess trials start at once and the short
    # ones fill the gaps at the end, instead of one long test running alone after the rest.
    items.sort(key=lambda it: it.get_closest_marker("slow") is None)
    frac = os.environ.get("ACTSTORE_SLOW_SAMPLE")
    if not frac:
        return
    frac = float(frac)
    if not 0 < frac <= 1:
        raise pytest.UsageError(f"ACTSTORE_SLOW_SAMPLE={frac}: give a fraction in (0, 1]")
    seed = _slow_seed()

    def kept(item) -> bool:
        h = hashlib.sha256(f"{seed}|{item.nodeid}".encode()).digest()
        return int.from_bytes(h[:8], "big") < frac * 2**64

    slow = [it for it in items if it.get_closest_marker("slow")]
    drop = [it for it in slow if not kept(it)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        gone = set(map(id, drop))
        items[:] = [it for it in items if id(it) not in gone]
    config._actstore_slow_sample = (seed, len(slow) - len(drop), len(slow))


def pytest_report_collectionfinish(config, start_path, items):
    got = getattr(config, "_actstore_slow_sample", None)
    if got:
        seed, kept, total = got
        return f"slow tests sampled: {kept} of {total} (ACTSTORE_SLOW_SEED={seed})"


@pytest.fixture(scope="session")
def device() -> str:
    """``"cuda"`` where a GPU is present, else ``"cpu"``."""
    return DEVICE


@pytest.fixture(scope="session")
def s3_server():
    """The run's one moto S3 server (a real subprocess on 127.0.0.1, started by the controller in
    ``pytest_configure``, shared by every xdist worker), with the tests' bucket."""
    pytest.importorskip("obstore", reason="object storage tests need obstore: pip install -e '.[s3,dev]'")
    pytest.importorskip("moto.server", reason="object storage tests need moto[server]>=5.2.1")
    endpoint = os.environ.get(MOTO_ENV)
    if not endpoint:  # the controller saw no moto; importorskip above says why if it is missing
        pytest.fail(f"no shared moto server ({MOTO_ENV} unset): tests/conftest.py pytest_configure starts it")
    server = SharedMoto(endpoint)
    server.make_bucket(BUCKET)
    return server


@pytest.fixture
def s3_url(s3_server, monkeypatch) -> str:
    """A fresh ``s3://`` prefix in the session's bucket; the environment points at the server."""
    for k, v in s3_env(s3_server.endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ACTSTORE_CACHE_DIR", raising=False)
    return fresh_url()
