"""``SAEConfig``: everything needed to rebuild an SAE, stored as JSON next to its weights.

Units: ``d`` input width, ``m`` latents, ``k`` active latents per row (TopK; the batch mean
for BatchTopK). ``scale`` is the dataset normalization factor the SAE was trained under
(inputs were multiplied by it); :meth:`actstore.sae.base.SparseAutoencoder.fold_scale`
folds it into the weights so that the saved SAE takes raw activations (``scale`` 1).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ..errors import SAEError

# The arch names a config may hold; actstore.sae.registry maps each to its class (and checks
# at import that the two agree, so a new arch cannot be half added).
ARCHS = ("topk", "batchtopk", "jumprelu", "gated", "relu")
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
    normalize_decoder: bool = True  # unit-norm decoder rows after every step (topk, batchtopk, jumprelu)
    scale: float = 1.0  # inputs were multiplied by this during training (1 once folded)
    threshold: float | None = None  # batchtopk: the inference threshold (running mean of batch thresholds)
    hook: str | None = None
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise SAEError(f"unknown SAE arch {self.arch!r}: use one of {', '.join(ARCHS)}")
        if self.d < 1 or self.m < 1:
            raise SAEError(f"SAE sizes must be positive, got d={self.d} m={self.m}")
        if self.arch in ("topk", "batchtopk"):
            if not self.k or not 1 <= self.k <= self.m:
                raise SAEError(f"arch {self.arch!r} needs 1 <= k <= m={self.m}, got k={self.k}")
            if self.k_aux is None:
                self.k_aux = min(self.m, max(1, self.d // 2))

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
