"""``keep_best``: per group, the K best entries of a fixed-width table, updated in place.

``table`` maps names to ``[G, K]`` arrays, each row a group's K entries sorted best first
(padding entries sort last). ``groups [c]`` and ``cand`` (same names, ``[c]``) are new
candidates, which the caller has already filtered against each group's current K-th entry,
so that only a few reach the sort. ``sort_keys(arrays) -> list`` gives np.lexsort keys
(least significant first) in which a smaller key is better; the order must be total over
real entries (e.g. value descending, then row ascending), so the result does not depend on
the order in which candidates or merges arrive.

Cost: one lexsort over ``(groups touched) * K + candidates`` entries.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def keep_best(
    table: dict[str, np.ndarray], groups: np.ndarray, cand: dict[str, np.ndarray], sort_keys: Callable[[dict], list]
) -> None:
    if groups.size == 0:
        return
    k = next(iter(table.values())).shape[1]
    touched, local = np.unique(groups, return_inverse=True)
    g = np.concatenate([np.repeat(np.arange(touched.size), k), local])
    both = {name: np.concatenate([table[name][touched].reshape(-1), cand[name]]) for name in table}
    order = np.lexsort(sort_keys(both) + [g])
    g = g[order]
    # Every touched group holds its K old entries, so each has at least K after the sort:
    # the first K of each group are at offsets start..start+K.
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    take = order[(starts[:, None] + np.arange(k)).reshape(-1)]
    for name in table:
        table[name][touched] = both[name][take].reshape(touched.size, k)
