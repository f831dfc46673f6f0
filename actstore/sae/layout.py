"""What a dictionary reads and reconstructs, resolved against the store: the hooks of each
block, and how a loader batch becomes the dictionary's input ``x`` and target ``y``.

- SAE: one hook, ``x [B, d]``, no target (it reconstructs ``x``).
- transcoder: ``x [B, d]`` from the source hook, ``y [B, d_out]`` from the target hook.
- crosscoder: K hooks (``--hooks``, wildcards expanded in layer order), or one hook of two
  stores (``--paired-store``): ``x [B, K * d]``, block ``k`` the ``k``-th hook, each
  normalized on its own; no target.
- CLT: L source and L target hooks paired layer by layer: ``x [B, L, d]``, ``y [B, L, d_out]``.

Two stores are read by two loaders with the same seed and selection; they hold the same rows
only when the stores hold the same tokens in the same layout, which :func:`check_paired`
checks up front (the first row whose token differs is named) and :meth:`Layout.assemble`
checks again on every batch (the global row ids and tokens of both batches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SAEError
from .config import CLT_ARCHS, TrainConfig


def _natural(name: str):
    """Sort key: the integers in ``name`` compared as numbers (layer 10 after layer 9)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def expand(spec: str, hooks: list[str], what: str) -> list[str]:
    """``spec`` (comma-separated names, ``*`` matching one dotted component) -> the store's
    hooks it names, each pattern's matches in layer order; one line when a name matches none."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "*" in part:
            rx = re.compile("^" + r"[^.]+".join(re.escape(p) for p in part.split("*")) + "$")
            found = sorted((h for h in hooks if rx.match(h)), key=_natural)
        else:
            found = [part] if part in hooks else []
        if not found:
            raise SAEError(f"{what} {part!r} names no hook of the store (it has {', '.join(hooks)}): pick from those")
        out += [h for h in found if h not in out]
    return out


def layer_of(name: str) -> int | None:
    """The layer number of a hook name: its first integer (``model.layers.12.mlp`` -> 12)."""
    m = re.search(r"\d+", name)
    return int(m.group()) if m else None


def check_pairs(sources: list[str], targets: list[str]) -> None:
    """A CLT's sources and targets pair layer by layer: as many of each, the same layer
    numbers in the same order; one line naming the first pair that does not."""
    if len(sources) != len(targets):
        raise SAEError(
            f"a CLT pairs --source and --target layer by layer, but they name {len(sources)} and "
            f"{len(targets)} hooks: give one target per source layer"
        )
    for s, t in zip(sources, targets):
        if layer_of(s) != layer_of(t):
            raise SAEError(
                f"a CLT pairs --source and --target layer by layer: source {s!r} (layer {layer_of(s)}) sits beside "
                f"target {t!r} (layer {layer_of(t)}); name the same layers in both"
            )


def check_paired(a, b) -> None:
    """Two stores for a crosscoder across models: the same rows, the same token ids in the
    same order, and the same row layout (so one loader seed gives both the same rows); one
    line naming the first row that differs."""
    if a.rows != b.rows:
        raise SAEError(
            f"--paired-store {b.path} holds {b.rows} rows and --store {a.path} {a.rows}: capture both models "
            "over the same tokens (same dataset, context and settings)"
        )
    ta, tb = a.tokens()["token"].numpy(), b.tokens()["token"].numpy()
    if (ta < 0).all() or (tb < 0).all():
        raise SAEError("two-model crosscoders check that both stores hold the same tokens: capture them with tokens")
    diff = np.flatnonzero(ta != tb)
    if diff.size:
        r = int(diff[0])
        raise SAEError(
            f"the stores hold different tokens: row {r} is token {int(ta[r])} in {a.path} and {int(tb[r])} in "
            f"{b.path} ({diff.size} rows differ); capture both models over the same tokens"
        )


@dataclass
class Layout:
    """The hooks of a run, resolved (see the module docstring)."""

    arch: str
    sources: list[str]
    targets: list[str]
    paired: object | None = None  # the second Store of a two-model crosscoder
    names: list[str] = field(default_factory=list)  # block labels: a crosscoder's K, a CLT's L targets

    @property
    def kind(self) -> str:
        if self.arch == "crosscoder":
            return "crosscoder"
        if self.arch in CLT_ARCHS:
            return "clt"
        return "sae" if self.sources == self.targets else "transcoder"

    def loader_hooks(self):
        """What the loader over ``--store`` reads: one hook (tensor batches) or a list (dicts)."""
        if self.kind == "sae":
            return self.sources[0]
        hooks = self.sources + [t for t in self.targets if t not in self.sources]
        return list(dict.fromkeys(hooks))

    def assemble(self, batch, batch_b=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, y)`` of a loader batch (and the paired store's batch); y None for SAEs and
        crosscoders (they reconstruct x)."""
        kind = self.kind
        if kind == "sae":
            return batch, None
        if kind == "transcoder":
            return batch[self.sources[0]], batch[self.targets[0]]
        if kind == "clt":
            return (
                torch.stack([batch[h] for h in self.sources], dim=1),
                torch.stack([batch[h] for h in self.targets], dim=1),
            )
        if self.paired is None:
            return torch.cat([batch[h] for h in self.sources], dim=1), None
        differ = (batch["row"] != batch_b["row"]) | (batch["token"] != batch_b["token"])
        if bool(differ.any()):
            i = int(differ.nonzero()[0])
            raise SAEError(
                f"the two stores' batches hold different rows (row {int(batch['row'][i])} beside "
                f"{int(batch_b['row'][i])}): their chunk layouts differ; capture both with the same settings"
            )
        hooks = self.sources[: len(self.sources) // 2]
        return torch.cat([batch[h] for h in hooks] + [batch_b[h] for h in hooks], dim=1), None


def resolve(cfg: TrainConfig, store, open_store) -> Layout:
    """The run's :class:`Layout` from ``cfg`` and the store's hooks (``open_store(path)`` opens
    the paired store); one line for a hook the store lacks or a list that does not fit the arch."""
    hooks = list(store.hooks)
    if cfg.arch == "crosscoder":
        chosen = expand(cfg.hooks, hooks, "--hooks")
        if cfg.paired_store is None:
            if len(chosen) < 2:
                raise SAEError(
                    f"a crosscoder reads K >= 2 hooks, --hooks names {chosen}: add hooks, or --paired-store "
                    "for one hook of two models"
                )
            return Layout(cfg.arch, chosen, chosen, names=chosen)
        other = cfg.paired_store if hasattr(cfg.paired_store, "hooks") else open_store(cfg.paired_store)
        missing = [h for h in chosen if h not in other.hooks]
        if missing:
            raise SAEError(f"--paired-store {other.path} lacks {', '.join(missing)} (it has {', '.join(other.hooks)})")
        check_paired(store, other)
        la, lb = _label(store), _label(other)
        if la == lb:
            la, lb = f"{la}#0", f"{lb}#1"
        names = [f"{la}:{h}" for h in chosen] + [f"{lb}:{h}" for h in chosen]
        return Layout(cfg.arch, chosen + chosen, chosen + chosen, paired=other, names=names)
    if cfg.arch in CLT_ARCHS:
        src = expand(cfg.source, hooks, "--source")
        tgt = expand(cfg.target, hooks, "--target")
        check_pairs(src, tgt)
        return Layout(cfg.arch, src, tgt, names=tgt)
    for role, name in (("hook" if cfg.hook else "source", cfg.source_hook), ("target", cfg.target_hook)):
        if name not in hooks:
            raise SAEError(f"{role} {name!r} is not in the store (it has {', '.join(hooks)}): pick one of those")
    return Layout(cfg.arch, [cfg.source_hook], [cfg.target_hook], names=[cfg.target_hook])


def _label(store) -> str:
    """A store's short name for block labels: its model's name, else its folder's."""
    prov = store.info().get("provenance") or {}
    model = prov.get("model") or (prov.get("capture") or {}).get("model")
    return str(model).rsplit("/", 1)[-1].rsplit(":", 1)[-1] if model else Path(str(store.path)).name
