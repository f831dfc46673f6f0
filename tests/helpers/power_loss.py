"""Power-loss storage for the crash-point tests: record every durable step, lose power after any.

The SIGKILL tests (tests/store/test_store_kill.py and the others) kill a real process, so what
the kernel had in its page cache survives. A power loss also drops what was never synced.
The two recorders here model that, in the way of ALICE and LazyFS: run an operation once to
count its steps, then run it again with the power cut after step N, for every N (or a
seeded sample), rebuild what a disk or an object store would hold after such a crash, reopen
it with the real code and check the application's invariants.

- :class:`LocalDisk`: local-disk semantics. It intercepts the file-system calls everything
  in actstore makes (``os.fsync``, ``os.replace``/``rename``, ``os.link``, ``os.unlink``,
  ``os.mkdir``, ``os.rmdir``, ``shutil.rmtree``) for paths under one root. Steps are those
  calls. File contents are not steps: a ``write`` changes nothing durable until its
  ``fsync``. After the crash, two disks are rebuilt (``state(model)``):

  - ``"synced"`` (POSIX at its strictest): a directory holds the entries it held at its
    last ``fsync`` (a directory never synced: the entries it had before the operation), and
    a file the bytes it held at its last ``fsync`` (never synced: empty). A rename, a new
    directory or a deletion that no directory ``fsync`` covered is lost.
  - ``"ordered"`` (a journaling file system, ext4 ``data=ordered`` without its rename
    heuristics): every metadata change up to the crash survives, in order, but file bytes
    only as last synced (a renamed file whose bytes were never synced is empty).

  The real ``LocalStorage`` runs unchanged on top (the interception is below it), so a
  missing ``fsync`` or a wrong order in it shows.
- :class:`ObjectCloud`: object-store semantics, a ``MemoryStorage`` with S3's capabilities
  (conditional puts, no locks: the writer holds a lease). A put that returned is durable; a
  put in flight at the crash is lost.

Threads. The writer puts shard objects from its pool (``actstore-enc`` threads) and its
commit record from its own thread. To make "the commit record landed before a shard" a
crash state that a run reaches every time rather than by chance, both recorders hold a pool
thread's step until some thread waits on a ``concurrent.futures.Future`` (the writer waits
for its shard puts before it commits), or for ``HOLD_SECONDS`` at most, a valve against a
deadlock in code that waits in another way. A writer that published its commit without
waiting for its shards is then caught at the first shard, deterministically.

After the crash every recorded call in any thread raises :class:`PowerLoss`, a
``BaseException`` so that no ``except Exception`` in the code swallows it.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from actstore.store.storage import _memory
from actstore.store.storage._memory import MemoryStorage

HOLD_SECONDS = 2.0
QUIET_SECONDS = 0.2
SETTLE_SECONDS = 5.0
HOLD = "actstore-enc"  # the writer's encode-and-put pool (store/writer.py)


class PowerLoss(BaseException):
    """The power is out: raised by every recorded call after the crash step."""


class _Recorder:
    """What both recorders share: the step counter, the crash, the hold of pool threads."""

    def __init__(self, crash_after: int | None, hold: str | None):
        self.crash_after = crash_after
        self.hold = hold
        self.steps = 0
        self.dead = False
        self.trace: list[str] = []  # "op path" of every step, for messages
        self._cv = threading.Condition(threading.RLock())
        self._waiting = 0  # threads waiting on a Future now
        self._patched_result = None
        self._last = 0.0  # monotonic time of the last recorded call (or attempt, after the crash)

    def _settle(self) -> None:
        """After a crash: wait until no thread has tried a recorded call for ``QUIET_SECONDS``
        (at most ``SETTLE_SECONDS``). A thread that was mid-call when the caller's call
        raised (an executor's write, a zarr I/O task) runs on a little; it meets the power
        loss at its next recorded call, and must not act on the real disk once the recorder
        is off."""
        end = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < end and time.monotonic() - self._last < QUIET_SECONDS:
            time.sleep(QUIET_SECONDS / 4)

    # -- the hold: a pool thread's step waits until some thread waits on a Future --------

    def _hold(self) -> None:
        if self.hold and threading.current_thread().name.startswith(self.hold):
            with self._cv:
                self._cv.wait_for(lambda: self._waiting > 0 or self.dead, timeout=HOLD_SECONDS)

    def _install_gate(self):
        original = Future.result
        rec = self

        def result(fut, timeout=None):
            with rec._cv:
                rec._waiting += 1
                rec._cv.notify_all()
            try:
                return original(fut, timeout)
            finally:
                with rec._cv:
                    rec._waiting -= 1

        Future.result = result
        self._patched_result = original

    def _remove_gate(self):
        if self._patched_result is not None:
            Future.result = self._patched_result
            self._patched_result = None

    @contextmanager
    def _step(self, what: str):
        """One recorded call: raise if the power is out, run the call, count it; the power
        goes out right after step ``crash_after``."""
        self._last = time.monotonic()
        self._hold()
        with self._cv:
            if self.dead:
                raise PowerLoss(f"power lost after step {self.crash_after}")
            counted = [True]
            yield counted
            if counted[0]:
                self.steps += 1
                self.trace.append(what)
                if self.steps == self.crash_after:
                    self._crash()
                    self.dead = True
                    self._cv.notify_all()

    def _crash(self) -> None:  # the recorder's snapshot of what survives
        raise NotImplementedError


# -- local disk ---------------------------------------------------------------------------------


class _Node:
    __slots__ = ("kind", "ident")

    def __init__(self, kind: str, ident: int):
        self.kind, self.ident = kind, ident  # "f" (file) or "d" (directory); a unique id


class LocalDisk(_Recorder):
    """Records the file-system calls under ``root``; see the module docstring.

    Use as a context manager around the operation; ``steps`` is the count afterwards. With
    ``crash_after=N`` the power goes out after step N; then ``restore(model)`` rewrites
    ``root`` as the disk would hold it after reboot.
    """

    def __init__(self, root, *, crash_after: int | None = None, hold: str | None = HOLD):
        super().__init__(crash_after, hold)
        self.root = os.path.realpath(root)
        self._ids = iter(range(1, 1 << 62))
        self.ns: dict[str, _Node] = {}  # path -> node: the namespace as the process sees it
        self.data: dict[int, bytes] = {}  # file id -> bytes at its last fsync (or before the run)
        self.listing: dict[int, dict[str, _Node]] = {}  # dir id -> entries at its last fsync
        self._snapshot()
        self.after: dict[str, dict] | None = None  # the two rebuilt disks, set at the crash
        self._saved = {}
        self._inside = threading.local()

    def _new(self, kind: str) -> _Node:
        return _Node(kind, next(self._ids))

    def _snapshot(self) -> None:
        """What the disk holds before the operation: all of it durable."""
        os.makedirs(self.root, exist_ok=True)
        self.ns[self.root] = self._new("d")
        for dirpath, dirs, files in os.walk(self.root):
            for name in dirs:
                self.ns[os.path.join(dirpath, name)] = self._new("d")
            for name in files:
                node = self.ns[os.path.join(dirpath, name)] = self._new("f")
                self.data[node.ident] = Path(dirpath, name).read_bytes()
        for path, node in self.ns.items():
            if node.kind == "d":
                self.listing[node.ident] = self._children(path)

    def _children(self, path: str) -> dict[str, _Node]:
        head = path + "/"
        return {p[len(head) :]: n for p, n in self.ns.items() if p.startswith(head) and "/" not in p[len(head) :]}

    def _mine(self, path) -> str | None:
        """The real path if it lies under root (and this is not a call inside rmtree), else None."""
        if getattr(self._inside, "rmtree", False):
            return None
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:
            return None
        return p if p == self.root or p.startswith(self.root + "/") else None

    def _node(self, path: str, kind: str) -> _Node:
        """The node at ``path``; a file the process made since (``open`` is not recorded)."""
        node = self.ns.get(path)
        if node is None:
            node = self.ns[path] = self._new(kind)
        return node

    def _move(self, src: str, dst: str) -> None:
        self._drop(dst)
        node = self._node(src, "d" if os.path.isdir(dst) else "f")
        for p in [p for p in self.ns if p.startswith(src + "/")]:
            self.ns[dst + p[len(src) :]] = self.ns.pop(p)
        del self.ns[src]
        self.ns[dst] = node

    def _drop(self, path: str) -> None:
        for p in [p for p in self.ns if p == path or p.startswith(path + "/")]:
            del self.ns[p]

    # -- the recorded calls --------------------------------------------------------------

    def _fsync(self, fd):
        path = self._mine(os.readlink(f"/proc/self/fd/{fd}"))
        if path is None:
            return self._saved["fsync"](fd)
        with self._step(f"fsync {self._rel(path)}"):
            if os.path.isdir(path):
                for name in os.listdir(path):
                    self._node(os.path.join(path, name), "d" if os.path.isdir(os.path.join(path, name)) else "f")
                self.listing[self._node(path, "d").ident] = self._children(path)
            else:
                with open(f"/proc/self/fd/{fd}", "rb") as f:  # the fd may be write-only
                    self.data[self._node(path, "f").ident] = f.read()
            # no real fsync: the recorder is the disk; this keeps a few hundred runs fast

    def _rename_like(self, name):
        real = self._saved[name]

        def call(src, dst, *a, **kw):
            s, d = self._mine(src), self._mine(dst)
            if s is None and d is None:
                return real(src, dst, *a, **kw)
            with self._step(f"{name} {self._rel(s)} -> {self._rel(d)}"):
                node = self._node(s, "d" if os.path.isdir(s) else "f") if s else None
                real(src, dst, *a, **kw)
                if name == "link":
                    self.ns[d] = node
                else:
                    self._move(s, d)

        return call

    def _remove_like(self, name):
        real = self._saved[name]

        def call(path, *a, **kw):
            p = self._mine(path) if not kw.get("dir_fd") else None
            if p is None:
                return real(path, *a, **kw)
            with self._step(f"{name} {self._rel(p)}"):
                if name == "rmtree":
                    self._inside.rmtree = True
                    try:
                        real(path, *a, **kw)
                    finally:
                        self._inside.rmtree = False
                else:
                    real(path, *a, **kw)
                self._drop(p)

        return call

    def _mkdir(self, path, *a, **kw):
        p = self._mine(path) if not kw.get("dir_fd") else None
        if p is None:
            return self._saved["mkdir"](path, *a, **kw)
        with self._step(f"mkdir {self._rel(p)}") as counted:
            try:
                self._saved["mkdir"](path, *a, **kw)
            except OSError:
                counted[0] = False
                raise
            self.ns[p] = self._new("d")

    def _rel(self, p: str | None) -> str:
        return "-" if p is None else os.path.relpath(p, self.root)

    def __enter__(self):
        self._saved = {
            "fsync": os.fsync, "replace": os.replace, "rename": os.rename, "link": os.link,
            "unlink": os.unlink, "remove": os.remove, "rmdir": os.rmdir, "mkdir": os.mkdir,
            "rmtree": shutil.rmtree,
        }  # fmt: skip
        os.fsync = self._fsync
        os.replace = self._rename_like("replace")
        os.rename = self._rename_like("rename")
        os.link = self._rename_like("link")
        os.unlink = self._remove_like("unlink")
        os.remove = self._remove_like("remove")
        os.rmdir = self._remove_like("rmdir")
        os.mkdir = self._mkdir
        shutil.rmtree = self._remove_like("rmtree")
        self._install_gate()
        return self

    def __exit__(self, *exc):
        if self.dead:
            self._settle()
        self._remove_gate()
        for name in ("fsync", "replace", "rename", "link", "unlink", "remove", "rmdir", "mkdir"):
            setattr(os, name, self._saved[name])
        shutil.rmtree = self._saved["rmtree"]
        with self._cv:
            self.dead = True  # a pool thread still holding wakes and stops
            self._cv.notify_all()
        return False

    # -- after the crash ------------------------------------------------------------------

    def _crash(self) -> None:
        files = {}

        def walk(ident: int, rel: str):
            for name, node in self.listing.get(ident, {}).items():
                sub = f"{rel}/{name}" if rel else name
                if node.kind == "d":
                    files[sub] = None
                    walk(node.ident, sub)
                else:
                    files[sub] = self.data.get(node.ident, b"")

        walk(self.ns[self.root].ident, "")
        synced = dict(files)
        ordered = {}
        for path, node in self.ns.items():
            if path == self.root:
                continue
            rel = os.path.relpath(path, self.root)
            ordered[rel] = None if node.kind == "d" else self.data.get(node.ident, b"")
        self.after = {"synced": synced, "ordered": ordered}

    def restore(self, model: str) -> None:
        """Rewrite ``root`` as the ``model`` disk holds it after the crash."""
        assert self.after is not None, "the power never went out"
        shutil.rmtree(self.root)  # called after the recorder is off and the writer's threads stopped
        os.makedirs(self.root)
        for rel, data in sorted(self.after[model].items()):
            p = os.path.join(self.root, rel)
            if data is None:
                os.makedirs(p, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(data)


# -- object storage -----------------------------------------------------------------------------


class ObjectCloud(MemoryStorage, _Recorder):
    """A memory store with object storage's capabilities (conditional puts, no locks, so the
    writer holds a lease), every state-changing request a step. Register it with
    :func:`mount` and open it as ``memory://NAME``."""

    supports_lock = False

    def __init__(self, name: str, *, objects: dict | None = None, crash_after=None, hold: str | None = HOLD):
        MemoryStorage.__init__(self, name)
        _Recorder.__init__(self, crash_after, hold)
        for k, v in (objects or {}).items():
            self._set(k, v)
        self.after: dict[str, bytes] | None = None

    def _crash(self) -> None:
        self.after = dict(self._objects)

    def _alive(self):
        self._last = time.monotonic()
        if self.dead:
            raise PowerLoss(f"power lost after step {self.crash_after}")

    def read(self, key):
        self._alive()
        return super().read(key)

    def exists(self, key):
        self._alive()
        return super().exists(key)

    def list(self, prefix):
        self._alive()
        return super().list(prefix)

    def version(self, key):
        self._alive()
        return super().version(key)

    def write_atomic(self, key, data):
        with self._step(f"put {key}"):
            super().write_atomic(key, data)

    def write_exclusive(self, key, data):
        with self._step(f"put-if-absent {key}") as counted:
            created = super().write_exclusive(key, data)
            counted[0] = created
            return created

    def write_if(self, key, data, expect):
        with self._step(f"put-if {key}") as counted:
            try:
                return super().write_if(key, data, expect)
            except BaseException:
                counted[0] = False
                raise

    def delete(self, key):
        with self._step(f"delete {key}"):
            super().delete(key)

    def delete_prefix(self, prefix):
        with self._step(f"delete-prefix {prefix}"):
            super().delete_prefix(prefix)


@contextmanager
def mount(cloud: ObjectCloud):
    """Make ``memory://<cloud.name>`` open ``cloud`` (actstore.create/open find it by name),
    with the Future gate installed; unmounted and stopped on exit."""
    with _memory._REGISTRY_LOCK:
        _memory._REGISTRY[cloud.name] = cloud
    cloud._install_gate()
    try:
        yield cloud
    finally:
        if cloud.dead:
            cloud._settle()
        cloud._remove_gate()
        with cloud._cv:
            cloud.dead = True
            cloud._cv.notify_all()
        _memory.forget(cloud.name)


def crash_points(total: int, sample: int | None, seed: int = 0) -> list[int]:
    """Every step 1..total, or a seeded sample of ``sample`` of them (always the first and last)."""
    every = list(range(1, total + 1))
    if sample is None or sample >= total:
        return every
    rng = random.Random(seed)
    picked = set(rng.sample(every, sample - 2)) | {1, total}
    return sorted(picked)


def sample_size(default: int) -> int | None:
    """How many crash points a test runs: ``ACTSTORE_POWER_LOSS_SAMPLE`` (a number, or
    ``all`` for every one: ``make test-power-loss``), else ``default``, sized so that the
    suite fits its time on every commit while successive commits cover different points."""
    v = os.environ.get("ACTSTORE_POWER_LOSS_SAMPLE", "")
    if v == "all":
        return None
    return int(v) if v else default


def seed_of_run() -> int:
    """The seed of the crash-point sample: ``ACTSTORE_POWER_LOSS_SEED``, else the checked-out
    commit (successive commits cover different points; a failure reruns with the same seed,
    which the failure message prints)."""
    import subprocess

    seed = os.environ.get("ACTSTORE_POWER_LOSS_SEED")
    if not seed:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
        seed = head.stdout.strip()[:8] or "0"
    return int(seed, 16) if all(c in "0123456789abcdef" for c in seed.lower()) else sum(map(ord, seed))


def verdict(bad: list[str]) -> str:
    """The failure message of a crash-point test: how many states broke, the first few, and
    how to rerun the same sample."""
    seed = os.environ.get("ACTSTORE_POWER_LOSS_SEED") or f"{seed_of_run():08x}"
    return f"{len(bad)} crash states break the invariants (ACTSTORE_POWER_LOSS_SEED={seed}); first:\n" + "\n".join(
        bad[:5]
    )


MODELS = ("synced", "ordered")


def count_steps(base: Path, flow) -> int:
    """Run ``flow(base, ctx)`` once on the recorded disk rooted at ``base``; its step count."""
    with LocalDisk(base) as disk:
        flow(base, {})
    return disk.steps


def crash_each_step(tmp_path: Path, flow, verify, *, total: int, sample, tolerate=(), first=False):
    """Cut the power after each of ``crash_points(total, sample)`` in a fresh run of
    ``flow(base, ctx)`` (files under ``base = tmp_path/crash-N``; ``ctx`` a dict the flow
    fills with what the process knew before the crash), rebuild the disk as each of
    ``MODELS`` and call ``verify(base, where, ctx)``, which checks the invariants and reruns.

    Returns ``(bad, missed)``: one line per broken invariant (an AssertionError's first line,
    or any other error of the reopen or rerun, named), and the crash points a run never
    reached (runs of another length). ``tolerate``: errors the flow may end with besides
    :class:`PowerLoss` (one that reports the loss as its own error). ``first``: stop at the
    first broken invariant (a planted bug's test needs one)."""
    bad, missed = [], []
    for n in crash_points(total, sample, seed=seed_of_run()):
        if first and bad:
            break
        base = tmp_path / f"crash-{n}"
        ctx: dict = {}
        with LocalDisk(base, crash_after=n) as disk:
            try:
                flow(base, ctx)
            except (PowerLoss, *tolerate):
                pass
        if disk.after is None:
            missed.append(n)
            continue
        for model in MODELS:
            where = f"power lost after step {n} ({disk.trace[n - 1]}), {model} disk"
            disk.restore(model)
            try:
                verify(base, where, ctx)
            except AssertionError as e:
                bad.append(str(e).splitlines()[0] or where)
            except Exception as e:  # noqa: BLE001 - any error of the reopen or the rerun is a broken invariant
                bad.append(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        shutil.rmtree(base)
    return bad, missed
