"""A writer's lease on its segment, where the storage has no locks (object storage).

The lease is the zarr group ``segments/<seg>/lease/zarr.json`` whose
``attributes.actstore_lease`` is ``{writer, host, pid, boot_id, pid_ns, pid_start,
acquired, expires}`` (UTC ISO times; ``pid_start`` in clock ticks after boot, see below).
Every change is a conditional put (``Storage.write_if``):

- acquire: create it if absent (``If-None-Match: *``); if it is there and has expired (its
  holder died or stopped), or its holder is a process of this host that is certainly dead
  (below), take it over with ``If-Match`` on the ETag read, so of two takers one wins;
  otherwise refuse in one line naming the holder;
- renew: a heartbeat thread rewrites it every ``ttl/4`` seconds with ``If-Match`` on its
  own last ETag, so a writer that was stopped (SIGSTOP, a long GC pause, a suspended VM)
  and wakes up after a takeover finds another ETag and knows it lost the segment;
- release: write it back already expired (``If-Match``), so the next writer need not wait.

A dead holder on this host. A rerun after a crash (SIGKILL, OOM) on the same machine
should not wait out the ttl, and a pid alone cannot tell: pids are reused, and a host name
is shared by containers and survives reboots. So the record names the holder's process
exactly, as Linux's /proc gives it:

- ``boot_id`` (/proc/sys/kernel/random/boot_id): this kernel's boot, random per boot. It
  guards against a reboot (pids and start ticks start over) and against another machine
  with the same host name. It does not tell containers apart (they share the kernel), so:
- ``pid_ns``: the inode of the holder's pid namespace (/proc/self/ns/pid), unique within
  one boot: a container with the same host name on the same kernel has another one, and
  its pids are not ours to look up. /etc/machine-id is not used: container images often
  share one, or have none.
- ``pid_start``: field 22 of /proc/<pid>/stat, the process's start in clock ticks after
  boot; exact (no wall clock involved), so a reused pid shows another value.

The holder is dead when host name, ``boot_id`` and ``pid_ns`` are this process's, and
its pid is gone, exited (a zombie not yet reaped), or belongs to a process that started at
another tick (a reused pid). A record without ``pid_start`` (written by an older version)
is judged dead only when its host name is this one and its pid exists on this host not at
all. Anything else (another host, a live or stopped holder, a process /proc hides, or a
system without /proc, where nothing is recorded) waits for expiry as before. A wrong guess
would not tear the segment: the fencing below stops the holder at its next put or commit.

``ACTSTORE_LEASE_SECONDS`` (default 60) is the time a lease lasts without renewal; the
clocks of writers of one segment must agree to well within it. The lease alone does not
fence a writer stopped between its check and its put: every object a writer writes is
also a conditional put (store/writer.py), and a writer that takes over writes a commit
record first, so the stale writer's next put or commit fails (docs/FORMAT.md).

A storage that ignores ``If-None-Match`` (some S3-compatible servers) would let two writers
both "create": acquire probes for that once and refuses to write there.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import socket
import threading

from .errors import StoreError
from .format import group_doc
from .storage import Storage, VersionConflict


def lease_seconds() -> float:
    v = os.environ.get("ACTSTORE_LEASE_SECONDS", "60")
    try:
        ttl = float(v)
    except ValueError:
        raise StoreError(f"ACTSTORE_LEASE_SECONDS={v!r} is not a number of seconds") from None
    if ttl <= 0:
        raise StoreError(f"ACTSTORE_LEASE_SECONDS={v!r} must be positive")
    return ttl


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _parse(data: bytes) -> dict:
    try:
        rec = json.loads(data)["attributes"]["actstore_lease"]
        _dt.datetime.fromisoformat(rec["expires"])
        return rec
    except (ValueError, KeyError, TypeError):
        return {"writer": "?", "host": "?", "pid": "?", "expires": "1970-01-01T00:00:00+00:00"}


def _proc_stat(pid: int | str) -> tuple[int, str, int] | None:
    """(pid, state letter, start in clock ticks after boot) of process ``pid`` from
    /proc/<pid>/stat, or None where there is no such entry (no such process, a process
    /proc hides, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        # Field 2 (the command name, in parentheses) may hold spaces and ")": the fields
        # after it start after the last ")". Field 3 is the state, field 22 the start.
        head, rest = raw[: raw.rindex(b")")], raw[raw.rindex(b")") + 1 :].split()
        return int(head.split(b" (", 1)[0]), rest[0].decode(), int(rest[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_exists(pid: int) -> bool:
    """Whether ``pid`` is a process of this pid namespace (signal 0 checks without sending;
    unlike /proc it also sees processes that a ``hidepid`` mount hides)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, under another user
    return True


@functools.lru_cache(maxsize=4)
def _identity(pid: int) -> dict | None:
    """``{boot_id, pid_ns, pid_start}`` of this process (``pid``, the cache key, so a forked
    child computes its own), or None where /proc cannot give them (not Linux, or a /proc
    of another pid namespace): then none is recorded and dead holders wait for expiry."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    me = _proc_stat("self")
    if not boot or me is None or me[0] != pid:
        return None
    return {"boot_id": boot, "pid_ns": ns, "pid_start": me[2]}


def _holder_dead(rec: dict) -> bool:
    """True when the holder that ``rec`` names is certainly a dead process of this host
    (see the module docstring); False when it may be alive or cannot be judged from here."""
    pid = rec.get("pid")
    if rec.get("host") != socket.gethostname() or type(pid) is not int or pid <= 0:
        return False  # another host, or no usable pid (os.kill(0 or -n) would mean a group)
    me = _identity(os.getpid())
    if me is None:
        return False
    if "pid_start" not in rec:  # an older version's record: only a pid that is not there at all
        return not _pid_exists(pid)
    if rec.get("boot_id") != me["boot_id"] or rec.get("pid_ns") != me["pid_ns"] or type(rec["pid_start"]) is not int:
        return False  # another boot, machine or container with this host name: its pids are not ours
    st = _proc_stat(pid)
    if st is None:
        return not _pid_exists(pid)  # hidden by hidepid: alive for all we know
    _, state, start = st
    # A zombie (Z) or dying (X) process has exited: it writes nothing more, though not reaped.
    return start != rec["pid_start"] or state in ("Z", "X")


class Lease:
    """The lease of ``writer`` on segment ``prefix``; :meth:`acquire` before writing."""

    def __init__(self, storage: Storage, prefix: str, writer: str, ttl: float | None = None):
        self.storage = storage
        self.prefix = prefix
        self.key = f"{prefix}/lease/zarr.json"
        self.writer = writer
        self.ttl = lease_seconds() if ttl is None else ttl
        self.etag: str | None = None
        self.took_over: dict | None = None  # the expired or dead holder's record, when taken over
        self.lost: str | None = None  # why this writer no longer holds the segment
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, expires: _dt.datetime) -> bytes:
        rec = {
            "writer": self.writer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **(_identity(os.getpid()) or {}),
            "acquired": _now().isoformat(timespec="milliseconds"),
            "expires": expires.isoformat(timespec="milliseconds"),
        }
        return json.dumps(group_doc({"actstore_lease": rec})).encode()

    def _refuse(self, rec: dict, why: str) -> StoreError:
        seg = self.prefix.rsplit("/", 1)[-1]
        return StoreError(
            f"segment {seg!r} in {self.storage.url} {why} writer {rec.get('writer')} (host {rec.get('host')}, "
            f"pid {rec.get('pid')}, lease until {rec.get('expires')}); one writer per segment: use another "
            "segment name, or wait for the lease to expire (ACTSTORE_LEASE_SECONDS)"
        )

    def acquire(self) -> None:
        self._probe_conditional()
        body = self._body(_now() + _dt.timedelta(seconds=self.ttl))
        try:
            self.etag = self.storage.write_if(self.key, body, None)
        except VersionConflict as e:
            held = _parse(self.storage.read(self.key))
            if _dt.datetime.fromisoformat(held["expires"]) > _now() and not _holder_dead(held):
                raise self._refuse(held, "is being written by") from None
            try:
                self.etag = self.storage.write_if(self.key, body, e.current)
            except VersionConflict:
                raise self._refuse(_parse(self.storage.read(self.key)), "was just taken by") from None
            self.took_over = held
        self._thread = threading.Thread(target=self._beat, name="actstore-lease", daemon=True)
        self._thread.start()

    def _probe_conditional(self) -> None:
        """Refuse a storage that accepts a second If-None-Match create of one key."""
        probe = f"{self.prefix}/lease/probe-{self.writer}"
        try:
            self.storage.write_if(probe, b"1", None)
            try:
                self.storage.write_if(probe, b"2", None)
            except VersionConflict:
                return
            raise StoreError(
                f"storage {self.storage.url} ignores conditional writes (If-None-Match), so two writers could "
                "tear a segment; write to AWS S3, GCS, Azure or a server with conditional PUTs, or to local disk"
            )
        finally:
            self.storage.delete(probe)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except StoreError:
                return  # lost (recorded in self.lost) or unreachable: the next put finds out

    def renew(self) -> None:
        """Extend the lease; :class:`StoreError` if another writer has taken it."""
        with self._mutex:
            if self.lost:
                raise StoreError(self.lost)
            body = self._body(_now() + _dt.timedelta(seconds=self.ttl))
            try:
                self.etag = self.storage.write_if(self.key, body, self.etag)
            except VersionConflict:
                try:
                    rec = _parse(self.storage.read(self.key))
                except StoreError:
                    rec = {"writer": "?"}
                seg = self.prefix.rsplit("/", 1)[-1]
                self.lost = (
                    f"segment {seg!r} in {self.storage.url} was taken over by writer {rec.get('writer')} (host "
                    f"{rec.get('host')}, pid {rec.get('pid')}) while writer {self.writer} was stopped; this writer "
                    "stopped and its uncommitted rows are discarded: resume the segment with a new writer"
                )
                raise StoreError(self.lost) from None

    def check(self) -> None:
        """Renew now: a writer calls it before each commit."""
        self.renew()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._mutex:
            if self.lost or self.etag is None:
                return
            try:  # written back expired: the next writer need not wait out the ttl
                self.storage.write_if(self.key, self._body(_now() - _dt.timedelta(seconds=1)), self.etag)
            except StoreError:
                pass  # taken over meanwhile, or unreachable: it expires by itself
            self.etag = None
