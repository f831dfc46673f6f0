"""``actstore train``: train an SAE on a store's activations (resumable; torchrun for many ranks).

The options are fields of :class:`~actstore.sae.TrainConfig`: their types and defaults
come from the dataclass, the help from the table below. ``--config FILE`` (JSON) gives any
field; flags on the command line win; ``--sae-option KEY=JSON`` sets SAE settings.
"""

from __future__ import annotations

import json

from ..errors import SAEError
from ..sae import TrainConfig, train
from ._options import add_options, given

HELP = {  # the TrainConfig fields offered as flags
    "store": "the store to train on",
    "hook": "the hook whose activations the SAE reconstructs",
    "arch": "topk | batchtopk | jumprelu | gated | relu",
    "latents": "number of latents m",
    "k": "active latents per row (topk; batch mean for batchtopk)",
    "tokens": "training tokens (all ranks together)",
    "out": "output folder: checkpoints, log.jsonl, sae/, summary.json; rerun to resume",
    "batch_size": "rows per step per rank",
    "lr": "peak learning rate (default 2e-4 / sqrt(latents / 2^14))",
    "warmup_steps": "linear warmup steps",
    "decay_frac": "fraction of the steps at the end with a linear decay to 0",
    "seed": "initialization and shuffle seed",
    "dead_tokens": "tokens without firing after which a latent counts as dead",
    "checkpoint_every": "steps between checkpoints",
    "log_every": "steps between metric lines",
    "device": "auto | cpu | cuda",
}
REQUIRED = ("store", "hook", "arch", "latents", "tokens", "out")


def register(sub) -> None:
    p = sub.add_parser("train", help="train an SAE on a store's activations (resumable; torchrun for many ranks)")
    p.add_argument("--config", help="JSON file with any of the options below (the command line wins)")
    add_options(p, TrainConfig, HELP, HELP)
    p.add_argument(
        "--sae-option",
        action="append",
        metavar="KEY=JSON",
        help="SAE setting, repeatable: k_aux, aux_coef, l1_coef, l0_coef, bandwidth, init_threshold",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(fn=run)


def run(args) -> int:
    opts = given(args, HELP)
    if args.sae_option:
        opts["sae"] = {}
        for kv in args.sae_option:
            key, _, val = kv.partition("=")
            opts["sae"][key] = json.loads(val)
    if args.config:
        cfg = TrainConfig.from_file(args.config, **opts)
    else:
        missing = [k for k in REQUIRED if k not in opts]
        if missing:
            raise SAEError(
                f"missing {', '.join('--' + m.replace('_', '-') for m in missing)} (on the command line or in --config)"
            )
        cfg = TrainConfig(**opts)
    summary = train(cfg, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
    elif summary.get("final"):
        f = summary["final"]
        print(
            f"trained {summary['arch']} m={summary['latents']} for {summary['steps']} steps "
            f"({summary['tokens']:,} tokens): fvu {f['fvu']:.3f}, l0 {f['l0']:.1f}, dead {f['dead_frac']:.3f}; "
            f"SAE in {summary['out']}/sae"
        )
    return 0
