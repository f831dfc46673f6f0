"""``actstore info STORE``: hooks, rows, dtype/codec, bytes on disk, ratio, statistics, segments."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="summarize a store: hooks, rows, dtype, codec, bytes, ratio, statistics, segments")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=run)


def run(args) -> int:
    print_info(args.path, as_json=args.json)
    return 0


def print_info(path, as_json: bool = False) -> None:
    from ..api import open as open_store  # deferred: numpy and the codecs, which building the parser must not load

    with open_store(path) as s:
        info = s.info()
    print(json.dumps(info, indent=2) if as_json else format_info(info))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def format_info(info: dict) -> str:
    lines = [
        f"store     {info['path']}",
        f"format    v{info['format_version']}, codec {info['codec']} ({info['codec_description']}), "
        f"shard {info['shard_rows']} rows",
        f"rows      {info['rows']:,}",
        f"on disk   {_human(info['bytes_on_disk'])}",
        "hooks",
    ]
    for name, h in info["hooks"].items():
        st = h["stats"]
        ratio = f"{h['compression_ratio']:.3f}x" if h["compression_ratio"] else "-"
        norm = f"{st['mean_norm']:.3f}" if st["count"] else "-"
        std = f"{st['mean_std']:.4f}" if st["count"] else "-"
        at = h.get("norm") or {}
        place = f", {at['norm']}-norm ({at['norm_module']})" if at.get("norm") else ""
        lines.append(
            f"  {name:<32} d={h['d']:<6} {h['dtype']:<5} {_human(h['bytes_on_disk']):>10} on disk, "
            f"ratio {ratio}, mean norm {norm}, mean std {std}, nonfinite rows {st['nonfinite_rows']}{place}"
        )
    lines.append("segments")
    for s in info["segments"]:
        lines.append(f"  {s['name']:<32} {s['rows']:>12,} rows  commit {s['commit']}  {s['time'] or ''}")
    prov = {k: v for k, v in info.get("provenance", {}).items() if k != "hooks"}
    if prov:
        lines.append("provenance " + json.dumps(prov, sort_keys=True))
    return "\n".join(lines)
