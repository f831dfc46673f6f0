"""``SAEConfig``: everything needed to rebuild an SAE, stored as JSON next to its weights; and
``TrainConfig``: every option of one ``actstore train`` run (the CLI's flags), here rather than
in ``train.py`` so that the command line builds its parser without importing the trainer (and
torch); ``actstore.sae.train.TrainConfig`` is the same class.

Units: ``d`` input width, ``m`` latents, ``k`` active latents per row (TopK; the batch mean
for BatchTopK). ``scale`` is the dataset normalization factor the SAE was trained under
(inputs were multiplied by it); :meth:`actstore.sae.base.SparseAutoencoder.fold_scale`
folds it into the weights so that the saved SAE takes raw activations (``scale`` 1).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SAEError

# The arch names a config may hold; actstore.sae.registry maps each to its class (and checks
# at import that the two agree, so a new arch cannot be half added).
ARCHS = (
    "topk", "batchtopk", "jumprelu", "gated", "relu", "matryoshka_batchtopk", "transcoder", "skip_transcoder",
    "crosscoder", "clt", "skip_clt",
)  # fmt: skip
# Archs that read a source hook and reconstruct a different target hook (``d_out`` may differ
# from ``d``), and the activations each of them can use.
TRANSCODER_ARCHS = ("transcoder", "skip_transcoder")
TRANSCODER_ACTIVATIONS = ("topk", "batchtopk", "jumprelu")
# Crosscoders: one dictionary over K hooks (or one hook of two models), the input the
# concatenation of the K blocks; relu is Anthropic's recipe (L1 weighted by the sum of the
# per-block decoder norms), topk / batchtopk keep unit-norm decoder rows over the concatenation.
CROSSCODER_ACTIVATIONS = ("topk", "batchtopk", "relu")
# Cross-layer transcoders: an encoder per layer, decoders from layer s to every layer l >= s.
CLT_ARCHS = ("clt", "skip_clt")
CLT_ACTIVATIONS = ("topk", "batchtopk", "jumprelu")
# The activations of each arch that takes one (the first is the default).
ACTIVATIONS = {
    **{a: TRANSCODER_ACTIVATIONS for a in TRANSCODER_ARCHS},
    "crosscoder": CROSSCODER_ACTIVATIONS,
    **{a: CLT_ACTIVATIONS for a in CLT_ARCHS},
}
# Matryoshka loss scales: ``mean`` is dictionary_learning's (mean over levels of 1/G-weighted
# squared errors, so (1/G^2) * sum), ``sum`` SAELens' (sum over levels).
MATRYOSHKA_LOSSES = ("mean", "sum")
FORMAT = "actstore-sae/1"


@dataclass
class SAEConfig:
    arch: str
    d: int
    m: int
    k: int | None = None  # topk / batchtopk
    k_aux: int | None = None  # AuxK latents (topk / batchtopk); None: d // 2
    aux_coef: float = 1 / 32  # AuxK loss weight (Gao et al. 2024)
    l1_coef: float = 5.0  # relu / gated: L1 weight on latents times decoder norms
    l0_coef: float = 1.0  # jumprelu: weight of the (pseudo-gradient) L0 penalty
    bandwidth: float = 0.001  # jumprelu: rectangle kernel width eps
    init_threshold: float = 0.001  # jumprelu: initial theta
    # Unit-norm decoder rows after every step (topk, batchtopk, jumprelu); None: the arch's
    # default, on for SAEs and off for transcoders (see SparseAutoencoder.reset_parameters).
    normalize_decoder: bool | None = None
    scale: float = 1.0  # inputs were multiplied by this during training (1 once folded)
    threshold: float | None = None  # batchtopk: the inference threshold (running mean of batch thresholds)
    hook: str | None = None  # the source hook (what the encoder reads)
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)
    # -- sources and targets (transcoders): the decoder writes ``d_out`` values of ``target``
    d_out: int | None = None  # None: d (an SAE reconstructs its own input)
    target: str | None = None  # the target hook; None: the source hook
    scale_out: float = 1.0  # targets were multiplied by this during training (1 once folded)
    activation: str | None = None  # transcoders: topk | batchtopk | jumprelu
    # -- matryoshka_batchtopk: the nested prefix widths (strictly increasing, the last is m)
    widths: list[int] | None = None
    matryoshka_loss: str = "mean"
    # -- crosscoders and CLTs: the hooks of each block (a crosscoder's K input blocks, each
    # d // K wide; a CLT's L source layers) and their training normalization factors (1 once
    # folded); a CLT's L target hooks and theirs. A CLT's d, d_out and m are per layer.
    sources: list[str] | None = None
    source_scales: list[float] | None = None
    targets: list[str] | None = None
    target_scales: list[float] | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise SAEError(f"unknown SAE arch {self.arch!r}: use one of {', '.join(ARCHS)}")
        if self.d < 1 or self.m < 1 or (self.d_out is not None and self.d_out < 1):
            raise SAEError(f"SAE sizes must be positive, got d={self.d} m={self.m} d_out={self.d_out}")
        if self.normalize_decoder is None:
            self.normalize_decoder = self.arch not in (*TRANSCODER_ARCHS, *CLT_ARCHS)
        if self.arch in ACTIVATIONS:
            self.activation = self.activation or ACTIVATIONS[self.arch][0]
            if self.activation not in ACTIVATIONS[self.arch]:
                raise SAEError(
                    f"arch {self.arch!r} takes activation {' | '.join(ACTIVATIONS[self.arch])}, got {self.activation!r}"
                )
        elif self.activation not in (None, self.arch):
            raise SAEError(f"arch {self.arch!r} has no activation option, got {self.activation!r}")
        self._check_blocks()
        if self.arch not in (*TRANSCODER_ARCHS, *CLT_ARCHS) and self.d_out not in (None, self.d):
            raise SAEError(
                f"arch {self.arch!r} reconstructs its input (d={self.d}), not d_out={self.d_out}: use a transcoder"
            )
        if self.act in ("topk", "batchtopk", "matryoshka_batchtopk"):
            if not self.k or not 1 <= self.k <= self.m:
                raise SAEError(f"arch {self.arch!r} needs 1 <= k <= m={self.m}, got k={self.k}")
            if self.k_aux is None:
                self.k_aux = min(self.m, max(1, self.d_target // 2))
        if self.arch == "matryoshka_batchtopk":
            self.widths = check_widths(self.widths, self.m)
            if self.matryoshka_loss not in MATRYOSHKA_LOSSES:
                raise SAEError(
                    f"matryoshka_loss must be {' or '.join(MATRYOSHKA_LOSSES)}, got {self.matryoshka_loss!r}"
                )
        elif self.widths is not None:
            raise SAEError(f"widths are for arch matryoshka_batchtopk, not {self.arch!r}")

    def _check_blocks(self) -> None:
        """The hook lists of a crosscoder (``sources``: K >= 2 blocks of ``d // K``) and a CLT
        (``sources`` and ``targets``: L layers each), with one scale per hook."""
        multi = self.arch == "crosscoder" or self.arch in CLT_ARCHS
        if not multi:
            if self.sources or self.targets or self.source_scales or self.target_scales:
                raise SAEError(f"sources/targets lists are for crosscoders and CLTs, not arch {self.arch!r}")
            return
        if self.arch == "crosscoder":
            if not self.sources or len(self.sources) < 2:
                raise SAEError(f"a crosscoder reads K >= 2 hooks (sources), got {self.sources!r}")
            if self.d % len(self.sources):
                raise SAEError(f"a crosscoder's d={self.d} must be K={len(self.sources)} blocks of equal width")
            if self.targets is not None:
                raise SAEError("a crosscoder reconstructs its own sources: it takes no targets")
        else:
            if not self.sources or not self.targets or len(self.sources) != len(self.targets):
                raise SAEError(
                    f"a CLT needs one target per source layer, got {len(self.sources or [])} sources "
                    f"and {len(self.targets or [])} targets"
                )
        for name, hooks in (("source_scales", self.sources), ("target_scales", self.targets)):
            v = getattr(self, name)
            if v is None and hooks is not None:
                setattr(self, name, [1.0] * len(hooks))
            elif v is not None and (hooks is None or len(v) != len(hooks)):
                raise SAEError(f"{name} has {len(v)} entries for {len(hooks or [])} hooks")

    @property
    def blocks(self) -> int:
        """Hook blocks: a crosscoder's K, a CLT's L layers, 1 otherwise."""
        return len(self.sources) if self.sources else 1

    @property
    def act(self) -> str:
        """The activation function: the arch itself for SAEs, ``activation`` for transcoders."""
        return self.activation or self.arch

    @property
    def d_target(self) -> int:
        """The decoder's output width: ``d_out``, else ``d``."""
        return self.d_out or self.d

    @property
    def is_transcoder(self) -> bool:
        return self.arch in TRANSCODER_ARCHS

    @property
    def is_clt(self) -> bool:
        return self.arch in CLT_ARCHS

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, doc: dict) -> "SAEConfig":
        if doc.get("format", FORMAT) != FORMAT:
            raise SAEError(f"SAE config format {doc.get('format')!r} is not {FORMAT!r}: upgrade actstore")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(doc) - names - {"format"}
        if unknown:
            raise SAEError(f"SAE config has unknown keys {sorted(unknown)}: written by a newer actstore?")
        return cls(**{k: v for k, v in doc.items() if k in names})


def check_widths(widths, m: int) -> list[int]:
    """Matryoshka prefix widths: positive, strictly increasing, at most ``m``; ``m`` is
    appended when the last is below it (the outermost level is the whole dictionary)."""
    if not widths:
        raise SAEError("arch matryoshka_batchtopk needs --widths, e.g. 128,512,2048 (nested prefixes of the latents)")
    try:
        w = [int(v) for v in (widths.split(",") if isinstance(widths, str) else widths)]
    except ValueError:
        raise SAEError(f"matryoshka widths must be integers, got {widths!r}") from None
    if w[0] < 1 or any(b <= a for a, b in zip(w, w[1:])):
        raise SAEError(f"matryoshka widths must be positive and strictly increasing, got {w}")
    if w[-1] > m:
        raise SAEError(f"matryoshka widths {w} exceed the {m} latents: the last width must be at most m")
    return w if w[-1] == m else [*w, m]


# The defaults, chosen by benchmarks/sweep_train_defaults.py (TopK m=3072 k=32, 400k tokens of
# MiniLM layer-3 activations, held-out FVU; benchmarks/results/train_defaults_sweep.json).
# The old ones (batch 4096, lr 2e-4 / sqrt(m / 2^14) = 4.6e-4, 50 warmup steps = half of that
# run) left held-out FVU 0.334-0.336 (3 seeds); these give 0.136-0.137. More steps per token
# and a higher lr won throughout the grid: batch 1024 at the same lr gave 0.114, but halves a
# GPU's matmuls on long runs; 8x the old lr gave 0.100-0.137 but left 2-10% of the latents
# dead on the held-out rows (4x: 0.1-0.2%). Warmup 0 gave 0.132, 10% 0.139, 25% 0.145: 5% is
# kept as a margin for longer runs, where a cold start at this lr is the larger risk.
DEFAULT_BATCH = 2048
DEFAULT_WARMUP_FRAC = 0.05
LR_BASE = 8e-4  # lr = LR_BASE / sqrt(latents / 2^14): sparsify's scaling in m, at 4x its 2e-4
EVAL_ROWS_FRAC, EVAL_ROWS_MAX = 0.05, 16384

ARCH_KEYS = (
    "k_aux", "aux_coef", "l1_coef", "l0_coef", "bandwidth", "init_threshold", "normalize_decoder", "matryoshka_loss"
)  # fmt: skip


def _opt(default, help: str):  # noqa: A002 - argparse's word
    """A field offered as a ``actstore train`` flag, with its help."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    store: str = field(metadata={"help": "the store to train on"})
    hook: str | None = field(
        default=None, kw_only=True, metadata={"help": "SAEs: the hook whose activations the SAE reconstructs"}
    )
    arch: str = field(metadata={"help": " | ".join(ARCHS)})
    latents: int = field(metadata={"help": "number of latents m"})
    out: str = field(metadata={"help": "output folder: checkpoints, log.jsonl, sae/, summary.json; rerun to resume"})
    tokens: int = field(metadata={"help": "training tokens (all ranks together)"})
    k: int | None = _opt(None, "active latents per row (topk; batch mean for batchtopk)")
    source: str | None = _opt(
        None, "transcoders: the hook the encoder reads, e.g. 'model.layers.15.mlp:input'; CLTs: one per layer, "
        "comma-separated or with * (e.g. 'model.layers.*.mlp:input')"
    )  # fmt: skip
    target: str | None = _opt(
        None, "transcoders: the hook the decoder reconstructs, e.g. 'model.layers.15.mlp'; CLTs: one per layer "
        "(e.g. 'model.layers.*.mlp'), paired with --source layer by layer"
    )  # fmt: skip
    target_store: str | None = _opt(None, "the store holding --target, when not --store (it must be the same store)")
    hooks: str | None = _opt(
        None, "crosscoders: the K hooks one dictionary reads and reconstructs, comma-separated, "
        "* wildcards allowed (e.g. 'model.layers.4,model.layers.8,model.layers.12')"
    )  # fmt: skip
    paired_store: str | None = _opt(
        None, "crosscoders: a second store captured from another model on the same tokens; the "
        "crosscoder reads --hooks from both (model diffing), each model normalized on its own"
    )  # fmt: skip
    activation: str | None = _opt(
        None, "transcoders and CLTs: topk | batchtopk | jumprelu; crosscoders: topk | batchtopk | relu (default topk)"
    )
    shard_latents: bool = _opt(
        False, "CLTs under torchrun: split every layer's latents over the ranks (each reads the same "
        "batch; one all-reduce of the output per step) instead of data parallelism"
    )  # fmt: skip
    widths: str | None = _opt(None, "matryoshka_batchtopk: nested prefix widths, e.g. 128,512,2048 (m is appended)")
    batch_size: int = _opt(DEFAULT_BATCH, "rows per step per rank")
    lr: float | None = _opt(None, "peak learning rate (default LR_BASE / sqrt(latents / 2^14))")
    warmup_frac: float = _opt(DEFAULT_WARMUP_FRAC, "linear warmup over this fraction of the steps")
    warmup_steps: int | None = _opt(None, "linear warmup steps (overrides --warmup-frac)")
    decay_frac: float = _opt(0.2, "fraction of the steps at the end with a linear decay to 0")
    eval_rows: int | None = _opt(
        None, "rows at the end of the store set aside for a held-out evaluation, never trained on "
        "(default: 5%% of the rows, at most 16384; 0: no evaluation)"
    )  # fmt: skip
    eval_docs: int | None = _opt(None, "instead of --eval-rows: set aside the documents with the N highest ids")
    eval_model: str | None = _opt(
        None, "after training, splice the SAE into this model (a local HF folder or python:module:function) "
        "over the held-out tokens and report the LM loss increase"
    )  # fmt: skip
    eval_model_tokens: int = _opt(16384, "held-out tokens the --eval-model step runs over, at most")
    init_l0: float | None = _opt(
        None, "jumprelu/gated: start the thresholds where about this many latents fire per row, set from "
        "the first batch (default: --k, else 64; 0: keep the configured init_threshold)"
    )  # fmt: skip
    weight_decay: float = 0.0
    seed: int = _opt(0, "initialization and shuffle seed")
    normalize: str | None = "mean_norm"
    dead_tokens: int = _opt(1_000_000, "tokens without firing after which a latent counts as dead")
    checkpoint_every: int = _opt(200, "steps between checkpoints")
    log_every: int = _opt(10, "steps between metric lines")
    device: str = _opt("auto", "auto | cpu | cuda")
    buffer_rows: int = 65536
    threads: int | None = None
    sae: dict = field(default_factory=dict)  # SAEConfig overrides: k_aux, aux_coef, l1_coef, ...

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise SAEError(f"unknown arch {self.arch!r}: use one of {', '.join(ARCHS)}")
        for name in ("latents", "tokens", "batch_size", "checkpoint_every", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SAEError(f"{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "eval_rows", "eval_docs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise SAEError(f"{name} must be a non-negative integer, got {v!r}")
        if not 0 <= self.warmup_frac < 1:
            raise SAEError(f"warmup_frac must be in [0, 1), got {self.warmup_frac!r}")
        if self.eval_docs is not None and self.eval_rows is not None:
            raise SAEError("give --eval-rows or --eval-docs, not both")
        if self.eval_model and self.eval_rows == 0:
            raise SAEError("--eval-model runs over the held-out rows: leave --eval-rows at its default or above 0")
        unknown = set(self.sae) - set(ARCH_KEYS)
        if unknown:
            raise SAEError(f"unknown SAE option(s) {sorted(unknown)}: use {', '.join(ARCH_KEYS)}")
        self._check_hooks()

    def _check_hooks(self) -> None:
        """One line for each way of naming the wrong hooks for the arch (the hook lists of
        crosscoders and CLTs are matched against the store when training starts)."""
        if self.arch != "crosscoder" and (self.hooks is not None or self.paired_store is not None):
            raise SAEError(f"--hooks and --paired-store are for crosscoders, not arch {self.arch!r}")
        if self.shard_latents and self.arch not in CLT_ARCHS:
            raise SAEError(f"--shard-latents is for CLTs (clt, skip_clt), not arch {self.arch!r}")
        if self.arch in ACTIVATIONS and self.activation not in (None, *ACTIVATIONS[self.arch]):
            raise SAEError(
                f"arch {self.arch!r} takes --activation {' | '.join(ACTIVATIONS[self.arch])}, got {self.activation!r}"
            )
        if self.arch == "crosscoder":
            if self.hook is not None or self.source is not None or self.target is not None:
                raise SAEError(
                    "a crosscoder reads --hooks (K of them, or one with --paired-store): not --hook/--source"
                )
            if not self.hooks:
                raise SAEError(
                    "arch 'crosscoder' needs --hooks, e.g. --hooks 'model.layers.4,model.layers.8' "
                    "(or one hook and --paired-store for two models)"
                )
            return
        if self.arch in CLT_ARCHS:
            if self.hook is not None:
                raise SAEError(f"arch {self.arch!r} reads --source and reconstructs --target: give those, not --hook")
            if not self.source or not self.target:
                raise SAEError(
                    f"arch {self.arch!r} needs --source and --target, one hook per layer, e.g. "
                    "--source 'model.layers.*.mlp:input' --target 'model.layers.*.mlp'"
                )
            return
        if self.arch in TRANSCODER_ARCHS:
            if self.hook is not None:
                raise SAEError(f"arch {self.arch!r} reads --source and reconstructs --target: give those, not --hook")
            if not self.source or not self.target:
                raise SAEError(
                    f"arch {self.arch!r} needs --source and --target, e.g. --source 'model.layers.15.mlp:input' "
                    "--target 'model.layers.15.mlp'"
                )
            if self.source == self.target:
                raise SAEError(f"--source and --target are both {self.source!r}: for an SAE use --hook")
            return
        if self.activation is not None:
            raise SAEError(
                f"--activation is for transcoders, crosscoders and CLTs; arch {self.arch!r} is its own activation"
            )
        if self.hook is None and self.source is None:
            raise SAEError(f"arch {self.arch!r} needs --hook (the activations it reconstructs)")
        if self.hook is not None and self.source not in (None, self.hook):
            raise SAEError(f"--hook {self.hook!r} and --source {self.source!r} differ: give one of them")
        if self.target not in (None, self.hook or self.source):
            raise SAEError(
                f"arch {self.arch!r} reconstructs its own input: --target {self.target!r} needs --arch transcoder"
            )
        if self.arch == "matryoshka_batchtopk":
            check_widths(self.widths, self.latents)
        elif self.widths is not None:
            raise SAEError(f"--widths is for arch matryoshka_batchtopk, not {self.arch!r}")

    @property
    def source_hook(self) -> str:
        """The hook the encoder reads (``hook`` for SAEs)."""
        return self.source or self.hook

    @property
    def target_hook(self) -> str:
        """The hook the decoder reconstructs (the source for SAEs)."""
        return self.target or self.source_hook

    @classmethod
    def from_file(cls, path, **overrides) -> "TrainConfig":
        doc = json.loads(Path(path).read_text())
        doc.update({k: v for k, v in overrides.items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(doc) - names
        if unknown:
            raise SAEError(f"{path}: unknown training option(s) {sorted(unknown)}: use the TrainConfig fields")
        return cls(**doc)
