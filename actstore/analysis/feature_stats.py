"""``stats``: per-latent statistics over every selected row, and the dictionary's summary.

A latent *fires* on a row when its activation is > 0. Per latent ``[m]``:

- ``count`` int64 (rows it fires on), ``doc_count`` int64 (documents it fires in: runs of
  one document id in store order, which is the number of documents when each document's rows
  are contiguous, as in a store captured by one rank), ``sum`` / ``sumsq`` float64 of its
  activations (exact under merges: :class:`~actstore.analysis._tree.BlockTree`), ``max``
  float32 (0 if it never fires), ``mean`` float64 (over firing rows, 0 if none), ``density``
  (count / rows);
- ``hist [m, H]`` int64: activations in log-spaced bins, ``per_decade`` bins per decade
  from ``10**lo_exp`` to ``10**hi_exp``, plus an underflow bin ``(0, 10**lo_exp)`` first and
  an overflow bin ``[10**hi_exp, inf)`` last; ``hist_edges [H-1]`` float64;
- ``dead`` (never fires) and ``dense`` (density > ``dense_threshold``) bool.

Summary: ``l0_hist [m+1]`` int64 (rows by number of firing latents) and
``log_density_hist [50]`` int64 over the live latents' ``log10(density)`` in bins of 0.2
from -10 to 0 (``log_density_edges [51]``; densities below 1e-10 fall in the first bin).
"""

from __future__ import annotations

import numpy as np

from ._pass import Batch, Reducer
from ._tree import BlockTree

NODOC = np.iinfo(np.int64).min  # "no document seen yet"
LOG_DENSITY_EDGES = np.linspace(-10.0, 0.0, 51)


class FeatureStats(Reducer):
    name = "stats"

    def __init__(self, m: int, *, per_decade: int = 8, lo_exp: int = -4, hi_exp: int = 4, dense_threshold: float = 0.1):
        super().__init__(m)
        self.opts = {
            "per_decade": int(per_decade),
            "lo_exp": int(lo_exp),
            "hi_exp": int(hi_exp),
            "dense_threshold": float(dense_threshold),
        }
        self.edges = 10.0 ** (lo_exp + np.arange((hi_exp - lo_exp) * per_decade + 1) / per_decade)
        self.nh = self.edges.size + 1
        self.rows = np.zeros(1, np.int64)
        self.count = np.zeros(m, np.int64)
        self.doc_count = np.zeros(m, np.int64)
        self.first_doc = np.full(m, NODOC, np.int64)
        self.last_doc = np.full(m, NODOC, np.int64)
        self.max = np.zeros(m, np.float32)
        self.hist = np.zeros((m, self.nh), np.int64)
        self.l0 = np.zeros(m + 1, np.int64)
        self.sums = BlockTree()

    def config(self) -> dict:
        return dict(self.opts)

    def update(self, b: Batch) -> None:
        m, c, v = self.m, b.cols, b.vals
        self.rows += b.n
        self.count += np.bincount(c, minlength=m)
        np.maximum.at(self.max, c, v)
        vd = v.astype(np.float64)
        self.sums.push(b.block, {"sum": np.bincount(c, vd, m), "sumsq": np.bincount(c, vd * vd, m)})
        self.hist += np.bincount(c * self.nh + np.searchsorted(self.edges, vd, "right"), minlength=m * self.nh).reshape(
            m, self.nh
        )
        self.l0 += np.bincount(np.diff(b.row_ptr), minlength=m + 1)[: m + 1]
        if c.size:
            self._join(*self._doc_runs(b))

    def _doc_runs(self, b: Batch):
        """Per latent firing in ``b``: (latents, runs of one document among its entries in row
        order, first document, last document)."""
        m, c = self.m, b.cols
        row_start = np.r_[True, b.doc[1:] != b.doc[:-1]]
        run_doc = b.doc[row_start]  # [R] the document of each run of rows
        if run_doc.size * m <= 1 << 24 and np.unique(run_doc).size == run_doc.size:
            # Each document is one run of rows here (the usual case), so a latent's runs are
            # the row runs it fires in: one [R, m] mark instead of a stable argsort of the
            # entries (0.7 ms against 12-19 ms at 4096 rows x k=32, m=4096).
            run = np.cumsum(row_start) - 1
            mark = np.zeros((run_doc.size, m), bool)
            mark[run[b.ent_row], c] = True
            runs = mark.sum(0)
            lat = np.flatnonzero(runs)
            first = run_doc[mark[:, lat].argmax(0)]
            last = run_doc[run_doc.size - 1 - mark[::-1, lat].argmax(0)]
            return lat, runs[lat], first, last
        return self._doc_runs_sorted(b)

    def _doc_runs_sorted(self, b: Batch):
        """:meth:`_doc_runs` for any document order: entries sorted by latent."""
        c = b.cols
        order = np.argsort(c, kind="stable")  # entries stay in row order within a latent
        cs, ds = c[order], b.doc[b.ent_row[order]]
        new_latent = np.r_[True, cs[1:] != cs[:-1]]
        starts = new_latent | np.r_[True, ds[1:] != ds[:-1]]
        runs = np.bincount(cs[starts], minlength=self.m)
        lat = cs[new_latent]
        return lat, runs[lat], ds[new_latent], ds[np.r_[new_latent[1:], True]]

    def _join(self, lat, runs, first, last) -> None:
        """Append runs of latents ``lat`` that start at document ``first`` and end at ``last``."""
        cont = self.last_doc[lat] == first  # the same document goes on across the boundary
        self.doc_count[lat] += runs - cont
        unset = self.first_doc[lat] == NODOC
        self.first_doc[lat[unset]] = first[unset]
        self.last_doc[lat] = last

    def merge(self, other: "FeatureStats") -> None:
        self.rows += other.rows
        self.count += other.count
        np.maximum(self.max, other.max, out=self.max)
        self.hist += other.hist
        self.l0 += other.l0
        self.sums.merge(other.sums)
        lat = np.flatnonzero(other.first_doc != NODOC)
        self._join(lat, other.doc_count[lat], other.first_doc[lat], other.last_doc[lat])

    def state_dict(self) -> dict:
        sd = {k: getattr(self, k) for k in ("rows", "count", "doc_count", "first_doc", "last_doc", "max", "hist", "l0")}
        return {**sd, **self.sums.state_dict("sums/")}

    def load_state_dict(self, sd: dict) -> None:
        for k in ("rows", "count", "doc_count", "first_doc", "last_doc", "max", "hist", "l0"):
            setattr(self, k, np.array(sd[k]))
        self.sums.load_state_dict(sd, "sums/")

    def result(self) -> dict:
        rows = int(self.rows[0])
        z = np.zeros(self.m, np.float64)
        s = self.sums.total({"sum": z, "sumsq": z})
        density = self.count / max(rows, 1)
        live = self.count > 0
        logd = np.log10(np.maximum(density[live], 1e-300))
        ld = np.histogram(np.clip(logd, -10.0, 0.0), LOG_DENSITY_EDGES)[0].astype(np.int64)
        return {
            "latents/count": self.count,
            "latents/doc_count": self.doc_count,
            "latents/sum": s["sum"],
            "latents/sumsq": s["sumsq"],
            "latents/max": self.max,
            "latents/mean": np.where(live, s["sum"] / np.maximum(self.count, 1), 0.0),
            "latents/density": density,
            "latents/dead": ~live,
            "latents/dense": density > self.opts["dense_threshold"],
            "latents/hist": self.hist,
            "latents/hist_edges": self.edges,
            "summary/l0_hist": self.l0,
            "summary/log_density_hist": ld,
            "summary/log_density_edges": LOG_DENSITY_EDGES,
        }

    def attrs(self) -> dict:
        rows = int(self.rows[0])
        return {
            "rows": rows,
            "dead": int((self.count == 0).sum()),
            "dense": int((self.count / max(rows, 1) > self.opts["dense_threshold"]).sum()),
            "mean_l0": float((self.l0 * np.arange(self.m + 1)).sum() / max(rows, 1)),
        }


def busiest(count: np.ndarray, n: int, among=None) -> np.ndarray:
    """The ``n`` latents that fire on the most rows, as ascending ids (int64 ``[min(n, len)]``).

    ``count [m]``: rows each latent fires on (``latents/count``); ``among``: the latent ids to
    rank (default all), ties go to the lower id. The report's pages (``render(pages=n)``) and
    ablation's ``busiest`` option both pick with this, so they pick the same latents."""
    universe = np.arange(count.shape[0], dtype=np.int64) if among is None else np.sort(np.asarray(among, np.int64))
    order = np.argsort(-np.asarray(count, np.int64)[universe], kind="stable")
    return np.sort(universe[order[: max(0, int(n))]])
