"""``actstore capture``: activations of a model at hooks over data into a store (resumable).

The options are :class:`~actstore.capture.CaptureConfig`'s command-line fields (names,
types, defaults and help come from the dataclass) plus the run's inputs ``--model
--hooks --data --out``. ``--config FILE`` (YAML or JSON) gives any of them under the same
names (dashes or underscores); flags on the command line win. Under ``torchrun`` with
several ranks the process group is joined here and left after the run.
"""

from __future__ import annotations

import json

from ..capture.config import CLI_FIELDS, CaptureConfig
from ..errors import CaptureError, DependencyError
from ._options import add_options, given

# The run's inputs: capture()'s positional arguments, required here.
INPUTS = {
    "model": "local HF model folder, or python:module:function returning a model (or (model, tokenizer))",
    "hooks": "comma-separated module paths ('*' = one path component, ':input' for inputs) or TransformerLens "
    "hook names",
    "data": "text/jsonl/json/parquet/npy file, a folder (or a save_to_disk dataset), or a glob; repeat as "
    "NAME=PATH (--data pos=pos.jsonl --data neg=neg.jsonl) to name each source: the store then records which "
    "documents came from which",
    "out": "the store to write (created, or resumed if it exists)",
}
OPTIONS = (*INPUTS, *CLI_FIELDS)


def register(sub) -> None:
    p = sub.add_parser("capture", help="capture activations of a model at hooks over data into a store (resumable)")
    p.add_argument("--config", help="YAML or JSON file with any of the options below")
    for k, help_ in INPUTS.items():
        p.add_argument("--" + k, default=None, help=help_, action="append" if k == "data" else "store")
    add_options(p, CaptureConfig, CLI_FIELDS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(fn=run)


def load_config(path: str) -> dict:
    """The options in a YAML (``.yaml``/``.yml``) or JSON file, keys with underscores; hooks as one string."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CaptureError(f"config {path!r}: {e.strerror}") from None
    if path.endswith((".yaml", ".yml")):
        cfg = _load_yaml(path, text)
    else:
        try:
            cfg = json.loads(text)
        except ValueError as e:
            raise _parse_error(path, e) from None
    if not isinstance(cfg, dict):
        raise CaptureError(f"config {path!r} must hold a mapping of option: value")
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - set(OPTIONS))
    if unknown:
        raise CaptureError(f"config {path!r}: unknown options {unknown}; known: {', '.join(OPTIONS)}")
    if isinstance(cfg.get("hooks"), list):
        cfg["hooks"] = ",".join(cfg["hooks"])
    return cfg


def _load_yaml(path: str, text: str):
    # Deferred: pyyaml comes with the "capture" extra, and only YAML configs need it.
    try:
        import yaml
    except ImportError:
        raise DependencyError(
            f"config {path!r}: YAML configs need pyyaml; run `pip install pyyaml` or give a JSON file"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _parse_error(path, e) from None


def _parse_error(path: str, e: Exception) -> CaptureError:
    return CaptureError(f"config {path!r} does not parse ({type(e).__name__}: {str(e).splitlines()[0]})")


def run(args) -> int:
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    import torch.distributed as dist

    from .._dist import init_if_launched
    from ..capture import capture
    from ..capture.data import parse_sources

    opts = load_config(args.config) if args.config else {}
    opts.update(given(args, OPTIONS))
    missing = [k for k in INPUTS if not opts.get(k)]
    if missing:
        raise CaptureError(f"missing {', '.join('--' + m for m in missing)} (on the command line or in --config)")
    if not isinstance(opts["data"], dict):  # a --config file may give {name: path} itself
        opts["data"] = parse_sources(opts["data"])
    inputs = [opts.pop(k) for k in INPUTS]
    config = CaptureConfig(progress=not args.no_progress, **opts)
    joined = init_if_launched()
    try:
        summary = capture(*inputs, config)
    finally:
        if joined:
            dist.destroy_process_group()
    if args.json:
        print(json.dumps(summary))
    elif summary["rank"] == 0:
        extra = ""
        if summary["resumed_from"]:
            extra += f", resumed after {summary['resumed_from']:,}"
        if summary["nonfinite_rows_dropped"]:
            extra += f", {summary['nonfinite_rows_dropped']} rows with NaN/inf dropped"
        print(
            f"captured {summary['rows_this_run']:,} tokens in {summary['capture_seconds']:.1f} s "
            f"({summary['tokens_per_s']:,.0f} tokens/s, {summary['bytes_written'] / 1e9:.3f} GB written{extra}) "
            f"into {summary['store']}"
        )
    return 0
