"""``Latents``: the sparse code of a batch, in CSR form.

``row_ptr [n+1]`` int64, ``cols [nnz]`` int64 (latent ids), ``vals [nnz]`` float (the
activations, differentiable), ``m`` latents. A TopK code ``[n, k]`` is the CSR matrix with
``row_ptr = arange(n+1) * k`` (:meth:`Latents.from_topk`: no copy of the values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._numerics import csr_from_coo, rows_of


@dataclass
class Latents:
    row_ptr: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    m: int

    @classmethod
    def from_topk(cls, values: torch.Tensor, indices: torch.Tensor, m: int) -> "Latents":
        n, k = values.shape
        return cls(torch.arange(n + 1, device=values.device) * k, indices.reshape(-1), values.reshape(-1), m)

    @classmethod
    def from_dense(cls, f: torch.Tensor) -> "Latents":
        """From dense activations ``[n, m]`` (keeps the nonzeros; vals stay differentiable)."""
        rows, cols = f.nonzero(as_tuple=True)
        return cls(*csr_from_coo(f.shape[0], rows, cols.clone(), f[rows, cols]), f.shape[1])

    @property
    def n(self) -> int:
        return self.row_ptr.numel() - 1

    def rows(self) -> torch.Tensor:
        return rows_of(self.row_ptr, self.cols.numel())

    def l0(self) -> float:
        """Mean number of active (nonzero) latents per row."""
        return float((self.vals != 0).sum()) / max(1, self.n)

    def fired(self) -> torch.Tensor:
        """``[m]`` bool: latents active in at least one row."""
        active = self.cols[self.vals.detach() > 0]
        return torch.bincount(active, minlength=self.m) > 0

    def dense(self) -> torch.Tensor:
        """``[n, m]`` activations (differentiable in vals)."""
        out = torch.zeros(self.n, self.m, dtype=self.vals.dtype, device=self.vals.device)
        return out.index_put((self.rows(), self.cols), self.vals, accumulate=True)
