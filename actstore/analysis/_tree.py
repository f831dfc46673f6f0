"""``BlockTree``: floating-point sums that merge exactly, whatever the split of the rows.

Float addition is not associative, so summing a store's blocks left to right in one process
and summing two ranks' shares and then adding them give different last bits. Here a sum is
defined by a fixed binary tree over *global* block indices (block ``k`` holds store rows
``[k*B, (k+1)*B)``): a node at level ``l`` and index ``i`` covers blocks
``[i*2^l, (i+1)*2^l)`` and its value is ``combine(left child, right child)``. A pass keeps
a stack of the complete nodes it has seen (at most ~2 log2(blocks) of them); a leaf is
pushed and then merged with its left sibling as long as that sibling is on the stack. Any
split of a range into contiguous shares, merged in any grouping of adjacent shares, builds
the same nodes with the same values, and the stack left at the end is the canonical
decomposition of the range into maximal aligned intervals, folded left to right by
:meth:`total`. So every share merge is bit-identical to the single pass.

A node's payload is a dict of numpy arrays; ``combine(a, b) -> dict`` must not modify its
arguments (the default adds arrays of the same keys).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def add_payloads(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


class BlockTree:
    def __init__(self, combine: Callable[[dict, dict], dict] = add_payloads):
        self.combine = combine
        self.nodes: list[tuple[int, int, dict]] = []  # (level, index, payload), in row order

    def push(self, block: int, payload: dict) -> None:
        """Add the leaf of global block ``block`` (blocks must arrive in increasing order)."""
        self._push(0, int(block), payload)

    def _push(self, level: int, index: int, payload: dict) -> None:
        while self.nodes and index % 2 == 1 and self.nodes[-1][0] == level and self.nodes[-1][1] == index - 1:
            _, _, left = self.nodes.pop()
            payload = self.combine(left, payload)
            level, index = level + 1, index // 2
        self.nodes.append((level, index, payload))

    def merge(self, other: "BlockTree") -> None:
        """Append ``other``, which covers the blocks right after this tree's."""
        for level, index, payload in other.nodes:
            self._push(level, index, payload)

    def total(self, empty: dict) -> dict:
        """The sum over every block seen: the remaining nodes folded left to right."""
        out = None
        for _, _, payload in self.nodes:
            out = payload if out is None else self.combine(out, payload)
        return empty if out is None else out

    # -- state (arrays only, no pickles) -----------------------------------------------------

    def state_dict(self, prefix: str) -> dict[str, np.ndarray]:
        sd = {
            f"{prefix}levels": np.array([n[0] for n in self.nodes], dtype=np.int64),
            f"{prefix}indices": np.array([n[1] for n in self.nodes], dtype=np.int64),
        }
        for j, (_, _, payload) in enumerate(self.nodes):
            for k, v in payload.items():
                sd[f"{prefix}{j}/{k}"] = v
        return sd

    def load_state_dict(self, sd: dict, prefix: str) -> None:
        levels, indices = sd[f"{prefix}levels"], sd[f"{prefix}indices"]
        self.nodes = []
        for j, (lv, ix) in enumerate(zip(levels.tolist(), indices.tolist())):
            head = f"{prefix}{j}/"
            self.nodes.append((lv, ix, {k[len(head) :]: v for k, v in sd.items() if k.startswith(head)}))
