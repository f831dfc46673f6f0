"""The ``actstore`` command line: ``capture``, ``info`` and ``demo``.

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


# capture options: name -> (type, default, help). The same names (dashes or underscores)
# are read from a --config YAML/JSON file; flags given on the command line win.
CAPTURE_OPTIONS = {
    "model": (str, None, "local HF model folder, or python:module:function returning a model (or (model, tokenizer))"),
    "hooks": (str, None, "comma-separated module paths ('*' = one path component, ':input' for inputs) or TransformerLens hook names"),
    "data": (str, None, "text/jsonl/json/parquet/npy file, a folder (or a save_to_disk dataset), or a glob"),
    "out": (str, None, "the store to write (created, or resumed if it exists)"),
    "tokens": (int, None, "stop after this many stored tokens, all ranks together (default: all data)"),
    "context": (int, 128, "window length in tokens"),
    "batch_size": (int, 32, "windows per forward pass"),
    "dtype": (str, "bf16", "storage dtype: bf16, fp16, fp32, fp8, int8"),
    "codec": (str, "zstd", "zstd, lz4 or none"),
    "packing": (str, "pack", "pack (documents run across windows) or truncate (one window per document)"),
    "bos": (str, "auto", "prepend or none (auto: from the tokenizer)"),
    "eos": (str, "auto", "none, doc (after each document) or window (closing each window, BERT [SEP]); auto: from the tokenizer"),
    "drop": (str, None, "flags of rows not to store, e.g. 'bos' or 'bos,special' (pad rows never are)"),
    "nonfinite": (str, "drop", "rows holding NaN/inf: drop (counted and reported) or error"),
    "device": (str, "auto", "cpu, cuda, cuda:1 (auto: this rank's GPU if any)"),
    "model_dtype": (str, None, "cast the model to fp32, bf16 or fp16"),
    "text_column": (str, "text", "text column of json/parquet/dataset inputs"),
}


def _load_config(path: str) -> dict:
    from .store.errors import CaptureError

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CaptureError(f"config {path!r}: {e.strerror}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            cfg = yaml.safe_load(text)
        else:
            cfg = json.loads(text)
    except Exception as e:  # yaml.YAMLError or ValueError
        raise CaptureError(f"config {path!r} does not parse ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise CaptureError(f"config {path!r} must hold a mapping of option: value")
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - set(CAPTURE_OPTIONS))
    if unknown:
        raise CaptureError(f"config {path!r}: unknown options {unknown}; known: {', '.join(CAPTURE_OPTIONS)}")
    if isinstance(cfg.get("hooks"), list):
        cfg["hooks"] = ",".join(cfg["hooks"])
    return cfg


def _cmd_capture(args) -> int:
    import os

    import actstore
    from .store.errors import CaptureError

    opts = {k: default for k, (_, default, _) in CAPTURE_OPTIONS.items()}
    if args.config:
        opts.update(_load_config(args.config))
    opts.update({k: getattr(args, k) for k in CAPTURE_OPTIONS if getattr(args, k) is not None})
    missing = [k for k in ("model", "hooks", "data", "out") if not opts.get(k)]
    if missing:
        raise CaptureError(f"missing {', '.join('--' + m.replace('_', '-') for m in missing)} (on the command line or in --config)")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        summary = actstore.capture(opts.pop("model"), opts.pop("hooks"), opts.pop("data"), opts.pop("out"),
                                   progress=not args.no_progress, **opts)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if args.json:
        print(json.dumps(summary))
    elif summary["rank"] == 0:
        extra = ""
        if summary["resumed_from"]:
            extra += f", resumed after {summary['resumed_from']:,}"
        if summary["nonfinite_rows_dropped"]:
            extra += f", {summary['nonfinite_rows_dropped']} rows with NaN/inf dropped"
        print(f"captured {summary['rows_this_run']:,} tokens in {summary['capture_seconds']:.1f} s "
              f"({summary['tokens_per_s']:,.0f} tokens/s, {summary['bytes_written'] / 1e9:.3f} GB written{extra}) "
              f"into {summary['store']}")
    return 0


TRAIN_OPTIONS = {  # name: (type, help); defaults live in actstore.sae.TrainConfig
    "store": (str, "the store to train on"),
    "hook": (str, "the hook whose activations the SAE reconstructs"),
    "arch": (str, "topk | batchtopk | jumprelu | gated | relu"),
    "latents": (int, "number of latents m"),
    "k": (int, "active latents per row (topk; batch mean for batchtopk)"),
    "tokens": (int, "training tokens (all ranks together)"),
    "out": (str, "output folder: checkpoints, log.jsonl, sae/, summary.json; rerun to resume"),
    "batch_size": (int, "rows per step per rank (default 4096)"),
    "lr": (float, "peak learning rate (default 2e-4 / sqrt(latents / 2^14))"),
    "warmup_steps": (int, "linear warmup steps (default 50)"),
    "decay_frac": (float, "fraction of the steps at the end with a linear decay to 0 (default 0.2)"),
    "seed": (int, "initialization and shuffle seed (default 0)"),
    "dead_tokens": (int, "tokens without firing after which a latent counts as dead (default 1e6)"),
    "checkpoint_every": (int, "steps between checkpoints (default 200)"),
    "log_every": (int, "steps between metric lines (default 10)"),
    "device": (str, "auto | cpu | cuda (default auto)"),
}


def _cmd_train(args) -> int:
    from .sae import TrainConfig, train

    given = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    if args.sae_option:
        given["sae"] = {}
        for kv in args.sae_option:
            key, _, val = kv.partition("=")
            given["sae"][key] = json.loads(val)
    try:
        if args.config:
            cfg = TrainConfig.from_file(args.config, **given)
        else:
            missing = [k for k in ("store", "hook", "arch", "latents", "tokens", "out") if k not in given]
            if missing:
                raise ValueError(f"missing {', '.join('--' + m.replace('_', '-') for m in missing)} "
                                 "(on the command line or in --config)")
            cfg = TrainConfig(**given)
        summary = train(cfg, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"actstore train: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    elif summary.get("final"):
        f = summary["final"]
        print(f"trained {summary['arch']} m={summary['latents']} for {summary['steps']} steps "
              f"({summary['tokens']:,} tokens): fvu {f['fvu']:.3f}, l0 {f['l0']:.1f}, dead {f['dead_frac']:.3f}; "
              f"SAE in {summary['out']}/sae")
    return 0


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
    pc = sub.add_parser("capture", help="capture activations of a model at hooks over data into a store (resumable)")
    pc.add_argument("--config", help="YAML or JSON file with any of the options below")
    for k, (typ, default, help_) in CAPTURE_OPTIONS.items():
        pc.add_argument("--" + k.replace("_", "-"), type=typ, default=None,
                        help=help_ + (f" (default {default})" if default is not None else ""))
    pc.add_argument("--no-progress", action="store_true", help="no progress bar")
    pc.add_argument("--json", action="store_true", help="print the run summary as JSON")
    pc.set_defaults(fn=_cmd_capture)
    pt = sub.add_parser("train", help="train an SAE on a store's activations (resumable; torchrun for many ranks)")
    pt.add_argument("--config", help="JSON file with any of the options below (the command line wins)")
    for k, (typ, help_) in TRAIN_OPTIONS.items():
        pt.add_argument("--" + k.replace("_", "-"), type=typ, default=None, help=help_)
    pt.add_argument("--sae-option", action="append", metavar="KEY=JSON",
                    help="SAE setting, repeatable: k_aux, aux_coef, l1_coef, l0_coef, bandwidth, init_threshold")
    pt.add_argument("--no-progress", action="store_true", help="no progress bar")
    pt.add_argument("--json", action="store_true", help="print the run summary as JSON")
    pt.set_defaults(fn=_cmd_train)
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
