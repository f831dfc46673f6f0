"""``actstore train``: train an SAE on a store's activations (resumable; torchrun for many ranks).

The options are fields of :class:`~actstore.sae.TrainConfig`: their types and defaults
come from the dataclass, the help from each field's metadata. ``--config FILE`` (JSON) gives any
field; flags on the command line win; ``--sae-option KEY=JSON`` sets SAE settings.
"""

from __future__ import annotations

import dataclasses
import json

from ..errors import SAEError
from ..sae.config import TrainConfig
from ._options import add_options, given

# The TrainConfig fields offered as flags: those whose metadata carries a help text.
OPTIONS = [f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
REQUIRED = ("store", "arch", "latents", "tokens", "out")  # the hooks: TrainConfig checks them per arch


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train an SAE or a transcoder on a store's activations (resumable; torchrun for many ranks)"
    )
    p.add_argument("--config", help="JSON file with any of the options below (the command line wins)")
    add_options(p, TrainConfig, OPTIONS)
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
    from ..sae.train import train  # deferred: the trainer imports torch, which building the parser must not

    opts = given(args, OPTIONS)
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
        ev = summary.get("eval") or {}
        if "fvu" in ev:
            print(
                f"held out ({ev['rows']:,} rows never trained on): fvu {ev['fvu']:.3f}, l0 {ev['l0']:.1f}, "
                f"dead {ev['dead_frac']:.3f}"
            )
        em = summary.get("eval_model")
        if em:
            src, tgt = em.get("source"), em.get("target")
            if isinstance(src, list):  # a CLT: every layer's target replaced, from every layer's source
                where = f" from {src[0]} .. {src[-1]} into {tgt[0]} .. {tgt[-1]} ({len(src)} layers)"
            else:
                where = f" from {src} into {tgt}" if src != tgt else ""
            print(
                f"spliced into the model{where} ({em['tokens']:,} held-out tokens): LM loss {em['clean']:.3f} -> "
                f"{em['spliced']:.3f} (+{em['increase']:.3f}; zero-ablation {em['zero_ablation']:.3f}, "
                f"{em['recovered']:.1%} recovered)"
            )
    return 0
