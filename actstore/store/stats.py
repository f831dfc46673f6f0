"""Mergeable per-dimension statistics of one hook's activations.

Kept: the row count, the per-dimension mean and M2 (sum of squared deviations), the sum
of row L2 norms, and the number of rows left out because they held NaN or inf. Batches
and segments merge exactly with Chan et al.'s parallel update, so the merged result does
not depend on how rows were split. Accumulated in float64.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from .. import _native


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode("ascii")


def _unb64(s: str, d: int) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(s), dtype="<f8")
    if a.shape != (d,):
        raise ValueError(f"expected {d} float64 values, got {a.size}")
    return a.astype(np.float64)


@dataclass
class RunningStats:
    """Statistics over ``count`` finite rows of width ``d``.

    mean, m2: float64 ``[d]``; norm_sum: sum of the rows' L2 norms; nonfinite_rows: rows
    that held NaN/inf (not included in the other fields).
    """

    d: int
    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    norm_sum: float = 0.0
    nonfinite_rows: int = 0

    def __post_init__(self):
        if self.mean is None:
            self.mean = np.zeros(self.d, dtype=np.float64)
        if self.m2 is None:
            self.m2 = np.zeros(self.d, dtype=np.float64)

    def update(self, x) -> int:
        """Add rows ``x [n, d]`` (any float dtype, any device). Returns the number of
        non-finite rows found (they are counted, not added)."""
        import torch  # deferred: the stats of a store's commits are read without torch (actstore info)

        x = x.detach()
        if x.shape[0] == 0:
            return 0
        if x.dtype == torch.bfloat16:
            # The bits as they are: no float32 copy (4 bytes per value, a pass of its own);
            # row_moments_bf16 gives row_moments' results on their float32 values bit for bit.
            bits = x.to(device="cpu").contiguous().view(torch.int16).numpy()
            shift = self._shift(bits)
            s1, s2, norm_sum = _native.row_moments_bf16(bits, shift)
        else:
            x32 = x.to(device="cpu", dtype=torch.float32).contiguous().numpy()
            shift = self._shift(x32)
            s1, s2, norm_sum = _native.row_moments(x32, shift)
        if not (np.isfinite(s1).all() and np.isfinite(s2).all() and np.isfinite(norm_sum)):
            # Rare path: some row holds NaN/inf. Count those rows, add the rest.
            finite = torch.isfinite(x).all(dim=1).cpu()
            bad = int((~finite).sum())
            self.nonfinite_rows += bad
            if bad < x.shape[0]:
                self.update(x.cpu()[finite])
            return bad
        self.merge(RunningStats.from_moments(self.d, x.shape[0], shift, s1, s2, norm_sum))
        return 0

    def _shift(self, x: np.ndarray) -> np.ndarray:
        """float64 ``[d]`` to subtract before the moments of ``x`` (float32, or int16 bf16
        bits): the running mean, or the first row. The moments then stay small and
        M2 = sumsq - sum^2/n does not cancel."""
        if self.count:
            return self.mean
        if x.dtype == np.float32:
            return x[0].astype(np.float64)
        return _native.bf16_to_fp32(np.ascontiguousarray(x[0])).astype(np.float64)

    @classmethod
    def from_moments(cls, d: int, n: int, shift, s1, s2, norm_sum: float) -> "RunningStats":
        """Statistics of ``n`` rows from their shifted moments: ``s1 = sum(x - shift)``,
        ``s2 = sum((x - shift)^2)`` (``[d]`` each) and the sum of row norms."""
        if n == 0:
            return cls(d)
        s1 = np.asarray(s1, dtype=np.float64)
        s2 = np.asarray(s2, dtype=np.float64)
        return cls(
            d, n, np.asarray(shift, dtype=np.float64) + s1 / n, np.maximum(s2 - s1 * s1 / n, 0.0), float(norm_sum)
        )

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Fold ``other`` into ``self`` (Chan's parallel update); returns self."""
        if other.d != self.d:
            raise ValueError(f"cannot merge statistics of width {other.d} into width {self.d}")
        self.nonfinite_rows += other.nonfinite_rows
        if other.count == 0:
            return self
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (n_a * n_b / n)
        self.norm_sum += other.norm_sum
        self.count = n
        return self

    def minus(self, other: "RunningStats") -> "RunningStats":
        """The statistics of ``self``'s rows less ``other``'s, which must be some of them:
        :meth:`merge` run backwards (``rest.merge(other)`` gives ``self`` again, to float64
        rounding). M2 and the norm sum are clamped at 0 against that rounding."""
        if other.d != self.d:
            raise ValueError(f"cannot take statistics of width {other.d} from width {self.d}")
        if other.count > self.count or other.nonfinite_rows > self.nonfinite_rows:
            raise ValueError(
                f"cannot take {other.count} rows ({other.nonfinite_rows} non-finite) from {self.count} "
                f"({self.nonfinite_rows}): they are not a subset"
            )
        n = self.count - other.count
        bad = self.nonfinite_rows - other.nonfinite_rows
        if n == 0:
            return RunningStats(self.d, nonfinite_rows=bad)
        mean = (self.mean * self.count - other.mean * other.count) / n
        delta = other.mean - mean
        m2 = np.maximum(self.m2 - other.m2 - delta**2 * (n * other.count / self.count), 0.0)
        return RunningStats(self.d, n, mean, m2, max(self.norm_sum - other.norm_sum, 0.0), bad)

    def copy(self) -> "RunningStats":
        return RunningStats(self.d, self.count, self.mean.copy(), self.m2.copy(), self.norm_sum, self.nonfinite_rows)

    @property
    def var(self) -> np.ndarray:
        """Population variance per dimension (M2 / count)."""
        return self.m2 / max(self.count, 1)

    @property
    def mean_norm(self) -> float:
        return self.norm_sum / self.count if self.count else float("nan")

    def to_json(self) -> dict:
        """JSON form: arrays as base64 of little-endian float64."""
        return {
            "d": self.d,
            "count": self.count,
            "mean": _b64(self.mean),
            "m2": _b64(self.m2),
            "norm_sum": self.norm_sum,
            "nonfinite_rows": self.nonfinite_rows,
        }

    @classmethod
    def from_json(cls, j: dict) -> "RunningStats":
        """Parse and check ``to_json``'s output; ``ValueError``/``KeyError``/``TypeError`` name the bad field."""
        if not isinstance(j, dict):
            raise TypeError(f"statistics must be a JSON object, got {type(j).__name__}")
        d, count, nonfinite = j["d"], j["count"], j.get("nonfinite_rows", 0)
        for name, v in (("d", d), ("count", count), ("nonfinite_rows", nonfinite)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}={v!r} is not a non-negative integer")
        norm_sum = j["norm_sum"]
        if not isinstance(norm_sum, (int, float)) or isinstance(norm_sum, bool) or norm_sum < 0:
            raise ValueError(f"norm_sum={norm_sum!r} is not a non-negative number")
        if not isinstance(j["mean"], str) or not isinstance(j["m2"], str):
            raise TypeError("mean and m2 must be base64 strings")
        return cls(d, count, _unb64(j["mean"], d), _unb64(j["m2"], d), float(norm_sum), nonfinite)

    def as_dict(self) -> dict:
        """User-facing view: torch float64 tensors for the per-dimension fields."""
        import torch  # deferred, as in update()

        return {
            "count": self.count,
            "mean": torch.from_numpy(self.mean.copy()),
            "var": torch.from_numpy(self.var),
            "std": torch.from_numpy(np.sqrt(self.var)),
            "m2": torch.from_numpy(self.m2.copy()),
            "mean_norm": self.mean_norm,
            "nonfinite_rows": self.nonfinite_rows,
        }
