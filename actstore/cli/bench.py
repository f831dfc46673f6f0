"""``actstore bench {capture,store,loader,kernels,all}``: benchmark this machine.

Progress on stderr, a table per comparison on stdout (or ``--json``: the metadata and
every figure); ``kernels`` adds the measuring dispatch's choices (op, device, shape class,
choice, median per candidate). Before timing, each suite checks that its variants compute the same
result; a variant that does not stops the run with a one-line error. ``--device`` that is
not there, and a size that is not a positive integer, are one-line errors too (checked
before anything is written). ``store`` and ``loader`` take ``--store PATH`` (and ``--hook``):
bench the user's own store (its first ``--rows`` rows, default at most 262144) instead of
random data; it is only read, and the temporary stores are always removed.
"""

from __future__ import annotations

import json
import sys

from .. import bench

SIZES = {  # per suite: the options and their defaults (a CPU finishes each in about a minute)
    "capture": {"layers": 4, "d": 512, "seqs": 64, "context": 128, "batch_size": 8, "dtype": "bf16", "codec": "zstd"},
    "store": {"rows": 262144, "d": 1024, "codec": "zstd"},
    "loader": {"rows": 262144, "d": 1024, "batch_size": 4096},
    "kernels": {"n": 4096, "d": 768, "m": 24576, "k": 32},
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark capture, the store, the loader and the SAE kernels on this machine")
    bsub = p.add_subparsers(dest="suite", required=True)
    for name in [*bench.SUITES, "all"]:
        q = bsub.add_parser(name, help=f"the {name} benchmark" if name != "all" else "every benchmark")
        q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: a GPU if any)")
        q.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (default 5)")
        q.add_argument("--json", action="store_true", help="print the metadata and every figure as JSON")
        q.add_argument("--quiet", action="store_true", help="no progress on stderr")
        for suite in bench.SUITES if name == "all" else [name]:
            for opt, default in SIZES[suite].items():
                flag = "--" + opt.replace("_", "-")
                if any(flag in a.option_strings for a in q._actions):
                    continue
                q.add_argument(flag, type=type(default), default=None, help=f"(default {default})")
        if name in ("store", "loader"):
            q.add_argument(
                "--store",
                help="bench this existing store (path or URL; only read) instead of random data: "
                "--rows then counts its first rows (default: all, at most 262144)",
            )
            q.add_argument("--hook", help="with --store: the hook to bench (default: the store's only hook)")
        if name == "capture":
            q.add_argument("--model", help="a local HF model directory (default: the synthetic GPT-2)")
            q.add_argument("--hooks", help="with --model: module paths, comma separated")
        q.set_defaults(fn=run)


def run(args) -> int:
    names = list(bench.SUITES) if args.suite == "all" else [args.suite]
    options = {}
    user_store = getattr(args, "store", None)
    if getattr(args, "hook", None) and not user_store:
        raise bench.BenchError("--hook names a hook of --store PATH: give --store too")
    for suite in names:
        opts = {k: getattr(args, k, None) for k in SIZES[suite]}
        # With --store, the rows and width come from that store unless given.
        keep_unset = ("rows", "d") if user_store else ()
        options[suite] = {k: (v if v is not None or k in keep_unset else SIZES[suite][k]) for k, v in opts.items()}
        bench.check_sizes(suite, **{k: v for k, v in options[suite].items() if isinstance(SIZES[suite][k], int)})
        bench.check_sizes(suite, repeats=args.repeats)
        options[suite]["repeats"] = args.repeats
        if user_store:
            options[suite].update(store=user_store, hook=args.hook)
    if args.suite == "capture" and args.model:
        if not args.hooks:
            raise bench.BenchError("--model needs --hooks (its module paths, comma separated)")
        options["capture"].update(model=args.model, hooks=args.hooks)

    def progress(msg: str) -> None:
        print(f"bench {msg}", file=sys.stderr, flush=True)

    doc = bench.run(names, args.device, progress=None if args.quiet else progress, options=options)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    m = doc["meta"]
    gpu = m["machine"]["gpu"]
    print(
        f"machine: {m['machine']['cpu_model']} ({m['machine']['cpus_usable']} CPUs usable, "
        f"{m['machine']['memory_gib']} GiB)" + (f", {gpu['name']}" if gpu else "")
    )
    v = m["versions"]
    print(f"versions: actstore {v['actstore']}, torch {v['torch']}, numpy {v['numpy']}, python {v['python']}")
    for res in doc["results"]:
        print()
        print(bench.table(res))
    if "dispatch" in doc:
        print()
        print(bench.kernels.dispatch_table(doc["dispatch"], bench.device(args.device)))
    return 0
