"""CaptureConfig: every option of a capture run, as one frozen dataclass.

``actstore.capture(model, hooks, data, out, config, **overrides)`` takes one (overrides are
its field names as keywords), and ``actstore capture`` builds its options from the fields:
a field whose metadata has ``help`` and not ``cli=False`` becomes ``--name-with-dashes``
(type from the annotation, the default shown in the help) and a key of ``--config`` files.
The model, hooks, data and output store are not options but the run's inputs: they are
capture()'s positional arguments (and the required ``--model --hooks --data --out``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import CaptureError


def _opt(default, help: str, cli: bool = True):  # noqa: A002 - argparse's word
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass(frozen=True)
class CaptureConfig:
    """Options of a capture run; see ``actstore.capture``. Frozen: derive variants with ``replace()``."""

    tokens: int | None = _opt(None, "stop after this many stored tokens, all ranks together (default: all data)")
    context: int = _opt(128, "window length in tokens")
    batch_size: int = _opt(32, "windows per forward pass")
    dtype: str = _opt(
        "bf16",
        "storage dtype. Measured on SmolLM2-135M's 60 MLP hooks (x fewer bytes than raw bf16; relative "
        "error vs the fp32 activations, median hook): bf16 1.46x, 0.17%% (lossless for a bf16 model); fp16 "
        "1.17x, 0.02%%; fp32 0.59x, exact; fp8 2.35x, 2.4%%; int8 2.63x, 2.2%% (worst hook 5.1%%); q16 2.29x, "
        "0.90%% (any row at most 1.6%%: lossy with a bound). benchmarks/results/all_layer_capture_cpu.json",
    )
    codec: str = _opt("zstd", "zstd, lz4 or none")
    packing: str = _opt("pack", "pack (documents run across windows) or truncate (one window per document)")
    bos: str = _opt("auto", "prepend or none (auto: from the tokenizer)")
    eos: str = _opt(
        "auto", "none, doc (after each document) or window (closing each window, BERT [SEP]); auto: from the tokenizer"
    )
    drop: str | list | int | None = _opt(
        None, "flags of rows not to store, e.g. 'bos' or 'bos,special' (pad rows never are)"
    )
    nonfinite: str = _opt("drop", "rows holding NaN/inf: drop (counted and reported) or error")
    device: str | None = _opt("auto", "cpu, cuda, cuda:1 (auto: this rank's GPU if any)")
    model_dtype: str | None = _opt(None, "cast the model to fp32, bf16 or fp16 (an HF folder is loaded in it)")
    device_map: str | None = _opt(
        None, "spread an HF folder's model over devices with accelerate: auto, balanced or sequential"
    )
    text_column: str = _opt("text", "text column of json/parquet/dataset inputs")
    # Python-only settings: the command line has --no-progress, and the rest are for
    # tests, benchmarks and ranks that are not launched by torchrun.
    stop_early: bool = _opt(True, "end each forward right after the last hooked module", cli=False)
    progress: bool = _opt(True, "show a progress bar on rank 0", cli=False)
    slots: int = _opt(3, "pinned host buffers between the device and the writer thread", cli=False)
    commit_every: float = _opt(60.0, "seconds between commits (0: after every batch)", cli=False)
    rank: int | None = _opt(None, "this process's rank (with world_size; default from torchrun)", cli=False)
    world_size: int | None = _opt(None, "number of ranks (with rank; default from torchrun)", cli=False)
    chunks_per_shard: int | None = _opt(None, "store layout override (default 64)", cli=False)
    chunk_bytes: int | None = _opt(None, "store layout override (default ~2 MiB)", cli=False)
    durable: bool = _opt(True, "fsync every object before it becomes visible (benchmarks turn it off)", cli=False)

    def __post_init__(self):
        if self.tokens is not None and self.tokens <= 0:
            raise CaptureError(f"tokens={self.tokens}: must be positive (or omitted for all data)")
        if self.context < 2:
            raise CaptureError(f"context {self.context}: must be at least 2 tokens")

    def replace(self, **changes) -> CaptureConfig:
        """A copy with ``changes`` (field names) applied; an unknown name is a TypeError naming the fields."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown capture option(s) {unknown}; the options are {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(CaptureConfig))
# The options of `actstore capture` and of its --config files, besides model, hooks, data and out.
CLI_FIELDS = tuple(f.name for f in dataclasses.fields(CaptureConfig) if f.metadata.get("cli", True))
