"""The ``actstore`` command line: ``info`` and ``demo`` so far.

Exit codes: 0 on success, 1 on a store error, 2 on bad usage; failures print one line
to stderr starting with ``actstore:``.
"""

from __future__ import annotations

import argparse
import json
import sys


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def format_info(info: dict) -> str:
    lines = [
        f"store     {info['path']}",
        f"format    v{info['format_version']}, codec {info['codec']} ({info['codec_description']}), shard {info['shard_rows']} rows",
        f"rows      {info['rows']:,}",
        f"on disk   {_human(info['bytes_on_disk'])}",
        "hooks",
    ]
    for name, h in info["hooks"].items():
        st = h["stats"]
        ratio = f"{h['compression_ratio']:.3f}x" if h["compression_ratio"] else "-"
        norm = f"{st['mean_norm']:.3f}" if st["count"] else "-"
        std = f"{st['mean_std']:.4f}" if st["count"] else "-"
        lines.append(f"  {name:<32} d={h['d']:<6} {h['dtype']:<5} {_human(h['bytes_on_disk']):>10} on disk, "
                     f"ratio {ratio}, mean norm {norm}, mean std {std}, nonfinite rows {st['nonfinite_rows']}")
    lines.append("segments")
    for s in info["segments"]:
        lines.append(f"  {s['name']:<32} {s['rows']:>12,} rows  commit {s['commit']}  {s['time'] or ''}")
    prov = {k: v for k, v in info.get("provenance", {}).items() if k != "hooks"}
    if prov:
        lines.append("provenance " + json.dumps(prov, sort_keys=True))
    return "\n".join(lines)


def _cmd_info(args) -> int:
    import actstore

    with actstore.open(args.path) as s:
        info = s.info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_demo(args) -> int:
    from . import demo

    layers = tuple(int(x) for x in args.layers.split(","))
    demo.run_demo(args.out, layers=layers, context=args.context, batch_size=args.batch_size,
                  max_tokens=args.tokens, dtype=args.dtype, codec=args.codec)
    args.path = args.out
    args.json = False
    return _cmd_info(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="actstore", description="Capture, store and stream transformer activations.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="summarize a store: hooks, rows, dtype, codec, bytes, ratio, statistics, segments")
    pi.add_argument("path")
    pi.add_argument("--json", action="store_true", help="machine-readable output")
    pi.set_defaults(fn=_cmd_info)
    pd = sub.add_parser("demo", help="capture real all-MiniLM-L6-v2 activations over English text, then print info")
    pd.add_argument("--out", default="demo_store")
    pd.add_argument("--layers", default="1,3,5")
    pd.add_argument("--context", type=int, default=128)
    pd.add_argument("--batch-size", type=int, default=32)
    pd.add_argument("--tokens", type=int, default=None, help="stop after this many tokens (default: all text)")
    pd.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32", "fp8", "int8"])
    pd.add_argument("--codec", default="zstd", choices=["zstd", "lz4", "none"])
    pd.set_defaults(fn=_cmd_demo)
    args = p.parse_args(argv)
    from .store.errors import StoreError

    try:
        return args.fn(args)
    except StoreError as e:
        print(f"actstore: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("actstore: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
