"""What ``to_hf_dataset`` costs per row: rows/s of iterating it, without a format and with
``with_format("torch")`` (the README's usage), for three ways of handing the rows to
``datasets``, interleaved in one process:

- ``rows_list`` (before): a generator of row dicts with ``List(Value("float32"), length=d)``
  features, what ``to_hf_dataset`` declared until issue 21; ``datasets`` re-encodes each row
  as ``d`` Python scalars, and the torch format makes ``d`` one-element tensors and stacks them.
- ``rows_array2d``: the same generator with ``Array2D(shape=(1, d))`` features (numpy-backed:
  one tensor per row), whose rows come out ``[1, d]``, not the ``[d]`` a user expects.
- ``tables_list`` (after, ``to_hf_dataset`` now): the same ``List(..., length=d)`` features,
  rows handed over as Arrow tables of a block of rows; rows come out ``[d]``.

Store: ``ROWS`` random bf16 rows of one hook of width ``D`` (GPT-2 small's 768), token
columns on. Each timed call iterates the first ``TAKE`` rows of a fresh dataset. Checked
first: every variant's rows equal the store's rows, and the row shape each gives is recorded.

    python benchmarks/bench_hf_datasets.py      # ~2 min on 2 cores; results/hf_datasets_cpu.json
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import tempfile
from itertools import islice
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, metadata, summary, write_result  # noqa: E402

import actstore  # noqa: E402
from actstore.integrations import hf_datasets as hf  # noqa: E402

ROWS, D, TAKE, HOOK = 8192, 768, 2048, "blocks.6.hook_resid_post"


def make_store(path: Path) -> torch.Tensor:
    x = torch.randn(ROWS, D, generator=torch.Generator().manual_seed(0)).bfloat16()
    with actstore.create(path, {HOOK: D}, segment="rank00000", dtype="bf16", durable=False) as w:
        w.append(
            {HOOK: x}, tokens=torch.arange(ROWS) % 50257, doc=torch.arange(ROWS) // 128, pos=torch.arange(ROWS) % 128
        )
    return x.float()


def builders(path: Path) -> dict:
    """name -> a function making a fresh dataset over the store."""
    import datasets

    def rows_with(hook_feature, shape_row):
        base = hf.to_hf_dataset(path, HOOK)  # only for its generator arguments (shards, snapshot)
        kwargs = {k: v for k, v in base._ex_iterable.kwargs.items() if k != "features"}
        feats = datasets.Features({HOOK: hook_feature, **{k: datasets.Value(t) for k, t in hf.TOKEN_FEATURES.items()}})

        def gen(**kw):
            for r in hf._rows(**kw):
                r[HOOK] = shape_row(r[HOOK])
                yield r

        return lambda: datasets.IterableDataset.from_generator(gen, features=feats, gen_kwargs=kwargs)

    return {
        "rows_list": rows_with(datasets.List(datasets.Value("float32"), length=D), lambda x: x),
        "rows_array2d": rows_with(datasets.Array2D(shape=(1, D), dtype="float32"), lambda x: x[None]),
        "tables_list": lambda: hf.to_hf_dataset(path, HOOK),
    }


def take(ds, fmt):
    d = ds if fmt is None else ds.with_format(fmt)
    return list(islice(d, TAKE))


def as_rows(rows) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(r[HOOK], dtype=np.float32)).reshape(-1) for r in rows])


def main():
    global ROWS, TAKE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 256 rows, 1 repeat, writes *_quick.json")
    args = ap.parse_args()
    if args.quick:
        ROWS, TAKE, args.repeats = 1024, 256, 1
    meta = metadata()  # before anything is measured: the load and the commit at the start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s"
        want = make_store(path)[:TAKE]
        make = builders(path)
        shapes = {}
        for name, mk in make.items():  # untimed: every variant gives the store's rows
            for fmt in (None, "torch"):
                rows = take(mk(), fmt)
                if not torch.equal(as_rows(rows), want):
                    raise SystemExit(f"{name} ({fmt or 'no format'}) gives other rows than the store's")
                h = rows[0][HOOK]
                shapes[f"{name}/{fmt or 'python'}"] = list(h.shape) if hasattr(h, "shape") else [len(h)]
        variants = {
            f"{n}/{fmt or 'python'}": (lambda mk=mk, fmt=fmt: take(mk(), fmt))
            for n, mk in make.items()
            for fmt in (None, "torch")
        }
        times = interleaved(variants, args.repeats)
    speed = {}
    for name, secs in times.items():
        s = summary(secs)
        speed[name] = {**s, "rows_per_s": TAKE / s["median_s"], "row_shape": shapes[name]}
    ratios = {
        "torch: tables_list / rows_list (after / before)": speed["tables_list/torch"]["rows_per_s"]
        / speed["rows_list/torch"]["rows_per_s"],
        "torch: rows_array2d / rows_list": speed["rows_array2d/torch"]["rows_per_s"]
        / speed["rows_list/torch"]["rows_per_s"],
        "tables_list: torch / python": speed["tables_list/torch"]["rows_per_s"]
        / speed["tables_list/python"]["rows_per_s"],
    }
    print(f"{TAKE} rows of d={D} (float32 out of a bf16 store), median of {args.repeats}:")
    print(f"{'variant':24s} {'rows/s':>9s} {'spread':>7s}  row shape")
    for name, f in speed.items():
        print(f"{name:24s} {f['rows_per_s']:9.0f} {f['spread']:7.2f}  {f['row_shape']}")
    for k, v in ratios.items():
        print(f"{k}: {v:.1f}x")
    doc = {
        "meta": meta,
        "setup": {
            "rows_in_store": ROWS,
            "rows_per_call": TAKE,
            "d": D,
            "store_dtype": "bf16",
            "feature_dtype": "float32",
            "tokens": True,
            "versions": {"datasets": md.version("datasets"), "pyarrow": md.version("pyarrow")},
            "variants": {
                "rows_list": "row generator, List(Value('float32'), length=d) (before issue 21)",
                "rows_array2d": "row generator, Array2D(shape=(1, d), 'float32')",
                "tables_list": "Arrow tables of a block, List(Value('float32'), length=d) (to_hf_dataset now)",
            },
            "units": {
                "median_s": "seconds per call (iterating rows_per_call rows of a fresh dataset)",
                "rows_per_s": "rows_per_call / median_s",
                "row_shape": "shape of one row of the hook column in that format",
                "ratios": "rows/s over rows/s",
            },
        },
        "speed": speed,
        "ratios": ratios,
    }
    print("wrote", write_result("hf_datasets_cpu_quick" if args.quick else "hf_datasets_cpu", doc))


if __name__ == "__main__":
    main()
