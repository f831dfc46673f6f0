"""Committed state of an analysis's row passes, so that a run killed at any point (SIGKILL
included) continues from its last commit and gives the uninterrupted run's arrays bit for bit.

Files (all written to a temporary name, fsynced and renamed into place, the npz before the
json that names it; arrays read back with ``np.load(allow_pickle=False)``):

- ``<state_dir>/identity.json``: ``{"identity": sha256, "kind", "world"}``. The identity
  hashes what defines the result (store path, rows and segments, hooks, the groups'
  definition, the options, ``block_rows``); a state folder of another analysis, or of
  another world size, is refused with a one-line :class:`AnalysisError`.
- ``<state_dir>/<pass>/<rank>-of-<world>/state.json`` and ``state-<seq>.npz``: one row pass
  (e.g. ``steering.sums``) of one rank's share: the pass's arrays (its ``save()``) and the
  next block to read. A finished pass keeps its final state (``done``), so a rerun loads it
  and skips the pass.
- ``<state_dir>/<pass>/<rank>-of-<world>/part-<seq>.npz``: for a pass whose ``save()``
  returns arrays named ``+key`` (rows appended since its last commit, e.g. one projection
  per row), those rows, written once; ``state.json``'s ``parts`` lists them in order and
  ``load`` gets each ``+key`` concatenated.

A pass is tracked by :meth:`Checkpoint.track` (its ``save() -> {name: array}`` and
``load(arrays)``) and streamed by ``_rows.stream(..., resume=...)``: the blocks before the
committed one are skipped, and a commit is made every ``commit_rows`` store rows. Blocks
are aligned to global store rows and the float sums are tree-shaped (``_tree.py``), so the
resumed pass sees the same blocks in the same order with the same state.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import AnalysisError
from ..store.storage import LocalStorage
from ..store.storage._local import TMP
from .config import COMMIT_ROWS  # noqa: F401 - the representation jobs' default, read from here


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path``, or the old file: the store's own ``LocalStorage.write_atomic``
    (a fsynced temporary renamed into place, then the folder fsynced; a full disk is a
    one-line StoreError)."""
    LocalStorage(path.parent).write_atomic(path.name, data)


def commit(folder: Path, arrays: dict[str, np.ndarray], doc: dict) -> dict:
    """Write ``arrays`` as ``state-<seq>.npz`` (seq = ``doc["seq"] + 1``), then ``state.json``
    (``doc`` with the new ``seq`` and ``npz``), then remove the previous npz. Returns the new doc."""
    folder.mkdir(parents=True, exist_ok=True)
    seq = int(doc.get("seq") or 0) + 1
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    name = f"state-{seq:08d}.npz"
    write_atomic(folder / name, buf.getvalue())
    old = doc.get("npz")
    new = {**doc, "seq": seq, "npz": name}
    write_atomic(folder / "state.json", json.dumps(new, indent=1).encode())
    if old and old != name:
        (folder / old).unlink(missing_ok=True)
    return new


def read_json(path: Path, state_dir) -> dict | None:
    """The JSON document at ``path``, None if absent; a damaged one is a one-line error."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:
        raise AnalysisError(f"{path} is damaged ({type(e).__name__}): delete the state folder {state_dir}") from None


def read_npz(path: Path, state_dir) -> dict[str, np.ndarray]:
    """Every array of the npz at ``path`` (no pickles); a missing, truncated or damaged file is
    a one-line error that names it and says to delete ``state_dir``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise AnalysisError(
            f"state file {path} is damaged or missing ({type(e).__name__}): delete the state folder {state_dir} "
            "to start the analysis again"
        ) from None


def store_identity(store) -> dict:
    """What names a store's content: its path, rows and segments."""
    return {
        "path": str(store.path),
        "rows": int(store.rows),
        "segments": [[s["name"], s["rows"]] for s in store.info()["segments"]],
    }


class Checkpoint:
    """The state folder of one analysis run (``state_dir=None``: no files, nothing resumes).

    ident: a JSON-able dict that defines the result (see the module docstring); rank/world:
    this process's share; commit_rows: store rows between commits; on_commit(pass, seq,
    rows): called after every commit (tests stop the process there)."""

    def __init__(
        self,
        state_dir,
        ident: dict,
        rank: int = 0,
        world: int = 1,
        commit_rows: int = COMMIT_ROWS,
        on_commit: Callable[[str, int, int], None] | None = None,
    ):
        self.dir = None if state_dir is None else Path(state_dir)
        self.rank, self.world = int(rank), int(world)
        self.commit_rows = max(int(commit_rows), 1)
        self.on_commit = on_commit
        self.kind = str(ident.get("kind", "analysis"))
        self.identity = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        if self.dir is not None:
            self._claim()

    def _claim(self) -> None:
        held = read_json(self.dir / "identity.json", self.dir)
        if held is None and self.dir.exists() and any(not p.name.startswith(TMP) for p in self.dir.iterdir()):
            # Every rank writes identity.json before anything else, so a folder with other files
            # either got it meanwhile (another rank, a moment ago) or holds something else.
            held = read_json(self.dir / "identity.json", self.dir)
            if held is None:
                raise AnalysisError(
                    f"state folder {self.dir} holds something else: pick another state folder, or delete it"
                )
        if held is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            doc = {"identity": self.identity, "kind": self.kind, "world": self.world}
            write_atomic(self.dir / "identity.json", json.dumps(doc).encode())
            return
        if held.get("identity") != self.identity:
            raise AnalysisError(
                f"state folder {self.dir} holds a different analysis in progress ({held.get('kind')}): "
                "delete it to start again, or pick another output folder"
            )
        if held.get("world") != self.world:
            raise AnalysisError(
                f"state folder {self.dir} holds this analysis in progress over {held.get('world')} ranks: rerun it "
                f"with that world size, or delete the folder"
            )

    def track(self, name: str, save: Callable[[], dict], load: Callable[[dict], None]) -> "PassState | None":
        """The resume handle of pass ``name`` for ``_rows.stream``, or None without a state folder."""
        if self.dir is None:
            return None
        return PassState(self, name, save, load)


class PassState:
    """One pass of one share: loads the committed state, says which blocks are left, commits."""

    def __init__(self, ck: Checkpoint, name: str, save, load):
        self.ck, self.name, self.save, self.load = ck, name, save, load
        self.dir = ck.dir / name / f"{ck.rank}-of-{ck.world}"
        self.doc = {"identity": ck.identity, "pass": name, "next_block": None, "rows": 0, "done": False, "seq": 0}
        self.doc["parts"] = []
        self.since = 0

    def begin(self, blocks: list[int]) -> list[int]:
        """Load the committed state (if any) into the pass; the blocks still to stream."""
        doc = read_json(self.dir / "state.json", self.ck.dir)
        if doc is None:
            return blocks
        if doc.get("identity") != self.ck.identity or doc.get("pass") != self.name:
            raise AnalysisError(f"{self.dir} holds another analysis's state: delete the state folder {self.ck.dir}")
        if not {"npz", "parts", "done", "next_block", "seq", "rows"} <= set(doc):
            raise AnalysisError(
                f"{self.dir / 'state.json'} is damaged (fields missing): delete the state folder {self.ck.dir}"
            )
        arrays = read_npz(self.dir / str(doc.get("npz")), self.ck.dir)
        tails: dict[str, list] = {}
        for part in doc["parts"]:
            for k, v in read_npz(self.dir / part, self.ck.dir).items():
                tails.setdefault(k, []).append(v)
        arrays.update({f"+{k}": np.concatenate(v) for k, v in tails.items()})
        self.load(arrays)
        self.doc = doc
        if doc["done"]:
            return []
        return [b for b in blocks if b >= doc["next_block"]]

    def after(self, block: int, rows: int, last: bool) -> None:
        """Block ``block`` (``rows`` store rows) is in the state; commit when ``commit_rows`` have passed."""
        self.since += rows
        self.doc["rows"] += rows
        if not last and self.since >= self.ck.commit_rows:
            self._commit(block + 1, False)

    def finish(self) -> None:
        """The pass is complete: commit its final state (kept, so that a rerun skips the pass)."""
        if not self.doc["done"]:
            self._commit(self.doc["next_block"] or 0, True)

    def _commit(self, next_block: int, done: bool) -> None:
        state = self.save()
        # Arrays named "+key" are the rows appended since the last commit: written once, to
        # their own part file, so that a growing buffer costs its size in writes, not its
        # size times the commits.
        tail = {k[1:]: v for k, v in state.items() if k.startswith("+")}
        parts = list(self.doc["parts"])
        if any(len(v) for v in tail.values()):
            buf = io.BytesIO()
            np.savez(buf, **tail)
            parts.append(f"part-{self.doc['seq'] + 1:08d}.npz")
            write_atomic(self.dir / parts[-1], buf.getvalue())
        whole = {k: v for k, v in state.items() if not k.startswith("+")}
        doc = {**self.doc, "next_block": int(next_block), "done": done, "parts": parts}
        self.doc = commit(self.dir, whole, doc)
        self.since = 0
        if self.ck.on_commit is not None:
            self.ck.on_commit(self.name, self.doc["seq"], self.doc["rows"])
