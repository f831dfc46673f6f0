"""``actstore demo``: capture real all-MiniLM-L6-v2 activations over English text, then print ``info``."""

from __future__ import annotations

from ..demo import run_demo
from .info import print_info


def register(sub) -> None:
    p = sub.add_parser("demo", help="capture real all-MiniLM-L6-v2 activations over English text, then print info")
    p.add_argument("--out", default="demo_store")
    p.add_argument("--layers", default="1,3,5")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tokens", type=int, default=None, help="stop after this many tokens (default: all text)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32", "fp8", "int8"])
    p.add_argument("--codec", default="zstd", choices=["zstd", "lz4", "none"])
    p.set_defaults(fn=run)


def run(args) -> int:
    layers = tuple(int(x) for x in args.layers.split(","))
    run_demo(
        args.out,
        layers=layers,
        context=args.context,
        batch_size=args.batch_size,
        max_tokens=args.tokens,
        dtype=args.dtype,
        codec=args.codec,
    )
    print_info(args.out)
    return 0
