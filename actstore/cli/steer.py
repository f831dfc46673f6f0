"""``actstore steer``: generations of a model for some prompts, without and with steering
vectors added after the prompt (``actstore.steer``), one scale after another.

``--vectors`` is a folder written by ``actstore steering`` (or ``SteeringVectors.save``);
``--scales=-4,4`` are the multipliers (with ``=``: argparse reads a leading ``-`` as a flag;
the baseline, scale 0, always comes first);
``--prompt`` is repeatable, ``--prompts FILE`` takes one prompt a line; ``--chat`` wraps each
prompt in the tokenizer's chat template. Greedy decoding, so the output is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AnalysisError


def register(sub) -> None:
    p = sub.add_parser("steer", help="baseline vs steered generations of a model for some prompts")
    p.add_argument("--model", required=True, help="local HF causal LM folder or python:module:function")
    p.add_argument("--vectors", required=True, help="a folder written by actstore steering")
    p.add_argument(
        "--scales",
        default="-4,4",
        help="comma list of multipliers, e.g. --scales=-4,4 (the baseline 0 is always shown)",
    )
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a file with one prompt a line")
    p.add_argument("--hooks", help="comma list: steer only these hooks of the vectors (default: all)")
    p.add_argument("--method", default="mean_diff", choices=("mean_diff", "pca"), help="which direction")
    p.add_argument("--max-new-tokens", type=int, default=30, help="tokens generated per prompt")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    p.add_argument("--json", action="store_true", help="print the generations as JSON")
    p.set_defaults(fn=run)


def run(args) -> int:
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    import torch

    from ..analysis.steer import steer
    from ..analysis.steering import SteeringVectors
    from ..models import prepare_model

    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += [ln for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise AnalysisError("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE")
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        raise AnalysisError(f"--scales {args.scales!r} is not a comma list of numbers") from None
    sv = SteeringVectors.load(args.vectors)
    hooks = [h.strip() for h in args.hooks.split(",")] if args.hooks else None
    lm = prepare_model(args.model, device=torch.device("cpu"))
    tok = lm.tokenizer
    if tok is None:
        raise AnalysisError(f"model {args.model} has no tokenizer: steer needs one to read prompts and print text")
    results = []
    for text in prompts:
        if args.chat:
            text = tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        ids = tok(text, return_tensors="pt", add_special_tokens=not args.chat)["input_ids"]
        row = {"prompt": text, "generations": {}}
        for s in [0.0] + [s for s in scales if s != 0.0]:
            with torch.no_grad(), steer(lm.model, sv, s, method=args.method, hooks=hooks):
                out = lm.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                )
            row["generations"][str(s)] = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        results.append(row)
    if args.json:
        print(json.dumps(results))
    else:
        for row in results:
            print(f"=== {row['prompt']!r}")
            for s, g in row["generations"].items():
                label = "baseline" if float(s) == 0 else f"scale {float(s):+g}"
                print(f"--- {label}: {g}")
    return 0
