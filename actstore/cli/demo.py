"""``actstore demo``: the main job on a real model, over English text, every stage timed.

``--model smollm2`` (the default): capture SmolLM2-135M-Instruct's ``model.layers.15`` into
``--out``, train a TopK SAE into ``--sae-out``, analyse with the logit lens and ablation (on
the ``--pages`` latents that fire most, which get report pages) into ``--analysis-out``, and
print each stage's time (the SAE's held-out FVU) and where the results are
(:func:`actstore.demo.run_smollm2_demo`; ``--json`` prints the summary as JSON too).
``--model minilm``: capture all-MiniLM-L6-v2 at ``--layers``, then print ``info`` (an encoder,
no SAE or analysis). Both write the input text to ``--data`` (default:
``demo_data/pydoc_topics.jsonl`` beside ``--out``) and print where.
"""

from __future__ import annotations

import json

from ..store.format import DTYPES
from .info import print_info


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="SmolLM2-135M over English text: capture a middle layer, train a TopK SAE, analyse it "
        "(--model minilm: capture MiniLM and print info)",
    )
    p.add_argument("--model", default="smollm2", choices=["smollm2", "minilm"])
    p.add_argument("--out", default="demo_store")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=None, help="(default 16 for smollm2, 32 for minilm)")
    p.add_argument("--tokens", type=int, default=None, help="stop after this many tokens (default: 100000 for "
                   "smollm2, all text for minilm)")  # fmt: skip
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES), help="(minilm only)")
    p.add_argument("--codec", default="zstd", choices=["zstd", "lz4", "none"], help="(minilm only)")
    p.add_argument("--layers", default="1,3,5", help="(minilm only) encoder layers to capture")
    p.add_argument("--layer", type=int, default=15, help="(smollm2 only) the block whose output is captured")
    p.add_argument("--sae-out", default="demo_sae", help="(smollm2 only) the SAE training run")
    p.add_argument("--analysis-out", default="demo_analysis", help="(smollm2 only) the analysis output")
    p.add_argument("--latents", type=int, default=2048, help="(smollm2 only) SAE width")
    p.add_argument("--k", type=int, default=32, help="(smollm2 only) active latents per token")
    p.add_argument("--train-tokens", type=int, default=200_000, help="(smollm2 only) SAE training tokens")
    p.add_argument("--pages", type=int, default=64, help="(smollm2 only) latents with a report page and ablation: "
                   "those that fire most")  # fmt: skip
    p.add_argument("--data", default=None, help="where the input text is written as JSON lines (default: "
                   "demo_data/pydoc_topics.jsonl beside --out)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="(smollm2 only) print the summary as JSON at the end")
    p.set_defaults(fn=run)


def run(args) -> int:
    from .. import demo  # deferred: it imports torch and transformers, which building the parser must not

    if args.model == "minilm":
        demo.run_demo(
            args.out,
            layers=tuple(int(x) for x in args.layers.split(",")),
            context=args.context,
            batch_size=args.batch_size or 32,
            max_tokens=args.tokens,
            dtype=args.dtype,
            codec=args.codec,
            data=args.data,
        )
        print_info(args.out)
        return 0
    summary = demo.run_smollm2_demo(
        args.out,
        args.sae_out,
        args.analysis_out,
        layer=args.layer,
        tokens=args.tokens or 100_000,
        context=args.context,
        batch_size=args.batch_size or 16,
        latents=args.latents,
        k=args.k,
        train_tokens=args.train_tokens,
        report_pages=args.pages,
        data=args.data,
    )
    if args.json:
        print(json.dumps(summary))
    return 0
