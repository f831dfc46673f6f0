"""Real subprocesses without paying for ``import torch`` each time: a fork server for tests.

The crash tests start hundreds of Python children (kill, resume and rank jobs), and about
two of each child's three-odd seconds on this machine went to importing torch and numpy. A
*zygote* imports them once; every child is then ``os.fork()`` of it, which runs the script
or module from scratch with the caller's ``argv``, environment and working directory. The
children stay real processes with their own pid: the tests SIGKILL and SIGINT them, read
their stdout line by line and check their exit status, exactly as with ``subprocess``.

Only torch, numpy and the standard library are preloaded, never actstore, so anything
actstore reads from the environment at import (``ACTSTORE_NO_NATIVE``...) is read in the
child, with the child's environment. Tests whose point is a fresh interpreter (what
``import actstore`` pulls in, how ``sys.path`` starts) keep using ``subprocess``.

Client side: :func:`Popen` and :func:`run` take the ``subprocess`` arguments the tests use
(``stdin``/``stdout``/``stderr`` as ``PIPE``, ``DEVNULL`` or None, ``text``, ``env``,
``cwd``, ``start_new_session``, ``timeout``, ``input``, ``capture_output``) and return
objects with the same methods. ``argv`` must be ``[sys.executable, SCRIPT, ...]`` or
``[sys.executable, "-m", MODULE, ...]``; anything else goes to ``subprocess`` unchanged.
``ACTSTORE_TEST_ZYGOTE=0`` sends everything to ``subprocess``.

Protocol (a Unix socket per zygote): the client sends one JSON request with the three
file descriptors of the child's stdin/stdout/stderr (``socket.send_fds``); the zygote forks,
answers ``{"pid": N}``, and later ``{"status": S}`` on the same connection, with ``S`` as
``Popen.returncode`` gives it (``-signal`` for a signal).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PIPE, DEVNULL = subprocess.PIPE, subprocess.DEVNULL
_HERE = os.path.abspath(__file__)


# ---------------------------------------------------------------- client


class _Zygote:
    """The zygote process of this test process (started on first use, stopped at exit)."""

    _lock = threading.Lock()
    _inst: _Zygote | None = None

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="actstore-zygote-")
        self.path = os.path.join(self.dir, "sock")
        # The zygote inherits this process' environment: it is the base every child starts from.
        self.proc = subprocess.Popen([sys.executable, _HERE, self.path], stdin=DEVNULL)
        end = time.monotonic() + 120
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the test zygote did not start (exit {self.proc.poll()})")
            time.sleep(0.02)
        atexit.register(self.stop)

    @classmethod
    def get(cls) -> _Zygote:
        with cls._lock:
            if cls._inst is None or cls._inst.proc.poll() is not None:
                cls._inst = cls()
            return cls._inst

    def stop(self) -> None:
        from .s3 import stop_process

        stop_process(self.proc)
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


def _handled(argv) -> bool:
    if os.environ.get("ACTSTORE_TEST_ZYGOTE", "1") == "0":
        return False
    argv = [str(a) for a in argv]
    if len(argv) < 2 or argv[0] != sys.executable:
        return False
    if argv[1] == "-m":
        return len(argv) >= 3
    return not argv[1].startswith("-") and argv[1].endswith(".py")


def _end(spec, mode: str):
    """(fd for the child, file object for the parent or None) for one std stream."""
    if spec == PIPE:
        r, w = os.pipe()
        return (r, w) if mode == "r" else (w, r)
    if spec == DEVNULL:
        return os.open(os.devnull, os.O_RDWR), None
    if spec is None:
        return None, None
    if isinstance(spec, int):
        return spec, None
    return spec.fileno(), None


class ZygoteProc:
    """A child forked by the zygote, with ``subprocess.Popen``'s methods."""

    def __init__(self, argv, stdin=None, stdout=None, stderr=None, text=False, env=None, cwd=None,
                 start_new_session=False, universal_newlines=None):  # fmt: skip
        self.args = [str(a) for a in argv]
        text = bool(text or universal_newlines)
        std = [(stdin, "r"), (stdout, "w"), (stderr, "w")]
        if stderr == subprocess.STDOUT:
            std[2] = (None, "w")
        ends = [_end(spec, mode) for spec, mode in std]
        if stderr == subprocess.STDOUT:
            ends[2] = (ends[1][0], None)
        fds = [fd if fd is not None else i for i, (fd, _) in enumerate(ends)]
        req = {
            "argv": self.args[1:],
            "env": dict(os.environ if env is None else {str(k): str(v) for k, v in env.items()}),
            "cwd": os.path.abspath(cwd) if cwd is not None else os.getcwd(),
            "setsid": bool(start_new_session),
        }
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(_Zygote.get().path)
        socket.send_fds(self._sock, [json.dumps(req).encode() + b"\n"], fds)
        for (fd, keep), spec in zip(ends, (stdin, stdout, stderr)):
            if fd is not None and (keep is not None or spec == DEVNULL):
                os.close(fd)  # the child has its copy
        self._reader = self._sock.makefile("r")
        self.pid = json.loads(self._reader.readline())["pid"]
        self.returncode = None

        def wrap(end, mode):
            if end is None:
                return None
            if text:
                return open(end, mode, encoding="utf-8", errors="replace")
            return open(end, mode + "b", buffering=0 if mode == "w" else -1)

        self.stdin = wrap(ends[0][1], "w")
        self.stdout = wrap(ends[1][1], "r")
        self.stderr = wrap(ends[2][1], "r") if stderr != subprocess.STDOUT else None
        self._status = threading.Event()
        self._cond = threading.Condition()
        self._stops = self._seen_stops = 0
        threading.Thread(target=self._await_status, daemon=True).start()

    def _await_status(self) -> None:
        while True:
            line = self._reader.readline()
            msg = json.loads(line) if line else {"status": -9999}
            with self._cond:
                if "stopped" in msg:
                    self._stops += 1
                else:
                    self.returncode = msg["status"]
                    self._status.set()
                self._cond.notify_all()
            if "status" in msg:
                return

    def wait_stopped(self, timeout=None) -> bool:
        """Block until the child stops (SIGSTOP, SIGTSTP) once more; False if it ended instead."""
        with self._cond:
            self._cond.wait_for(lambda: self._stops > self._seen_stops or self._status.is_set(), timeout)
            if self._stops > self._seen_stops:
                self._seen_stops += 1
                return True
            return False

    def poll(self):
        return self.returncode if self._status.is_set() else None

    def wait(self, timeout=None):
        if not self._status.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig) -> None:
        if not self._status.is_set():
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input=None, timeout=None):
        out, err = [], []

        def drain(f, into):
            if f is not None:
                into.append(f.read())
                f.close()

        threads = [threading.Thread(target=drain, args=(f, x), daemon=True)
                   for f, x in ((self.stdout, out), (self.stderr, err))]  # fmt: skip
        for t in threads:
            t.start()
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
            self.stdin = None
        end = None if timeout is None else time.monotonic() + timeout
        for t in threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if end is None else max(0.0, end - time.monotonic()))
        return (out[0] if out else None), (err[0] if err else None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                f.close()
        self.wait()


def wait_stopped(p) -> bool:
    """``os.waitpid(p.pid, os.WUNTRACED)`` for a zygote child or a ``subprocess`` one: True once
    ``p`` is stopped, False if it ended (then its ``returncode`` is set)."""
    if isinstance(p, ZygoteProc):
        return p.wait_stopped()
    _, status = os.waitpid(p.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return True
    p.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return False


def Popen(argv, **kw):
    """``subprocess.Popen`` through the zygote where ``argv`` is a Python script or module."""
    return ZygoteProc(argv, **kw) if _handled(argv) else subprocess.Popen(argv, **kw)


def run(argv, *, capture_output=False, timeout=None, input=None, check=False, **kw):
    """``subprocess.run`` through the zygote where ``argv`` is a Python script or module."""
    if not _handled(argv):
        return subprocess.run(argv, capture_output=capture_output, timeout=timeout, input=input, check=check, **kw)
    if capture_output:
        kw["stdout"] = kw["stderr"] = PIPE
    if input is not None:
        kw["stdin"] = PIPE
    p = ZygoteProc(argv, **kw)
    try:
        out, err = p.communicate(input, timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise
    cp = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if check:
        cp.check_returncode()
    return cp


# ---------------------------------------------------------------- server


def _child(req: dict, fds: list[int]) -> None:
    """In the forked child: become the requested process, run it, exit as Python would."""
    if req["setsid"]:
        os.setsid()
    for i, fd in enumerate(fds):
        if fd != i:
            os.dup2(fd, i)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(req["cwd"])
    # A fresh interpreter would put the request's PYTHONPATH on sys.path (python:MODULE:FN models).
    known = set(os.environ.get("PYTHONPATH", "").split(os.pathsep))
    extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in known]
    os.environ.clear()
    os.environ.update(req["env"])
    sys.path[1:1] = [os.path.abspath(p) for p in extra]
    # What a fresh interpreter would differ in: OpenMP read OMP_NUM_THREADS when the zygote loaded
    # torch, and numpy's global generator was seeded there (`random` reseeds itself after a fork).
    import numpy
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    numpy.random.seed()
    # Fresh std streams over fds 0-2 (the server's were other files).
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1 if os.isatty(1) else -1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    argv = req["argv"]
    import runpy

    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = req["cwd"]  # as `python -m` does
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))  # as `python SCRIPT` does
        runpy.run_path(argv[0], run_name="__main__")


def _serve(path: str) -> None:
    import numpy  # noqa: F401  (preloaded: what the children would import first)
    import torch  # noqa: F401

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path + ".tmp"
    srv.bind(tmp)
    srv.listen(64)
    os.rename(tmp, path)  # the client waits for this name: the socket is listening
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    while True:
        conn, _ = srv.accept()
        msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
        req = json.loads(msg.decode())
        pid = os.fork()
        if pid == 0:
            srv.close()
            conn.close()
            code = 0
            try:
                _child(req, fds)
            except SystemExit as e:
                code = e.code
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            # Leave as the interpreter would: SystemExit runs the threading shutdown and atexit.
            sys.exit(code)
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        threading.Thread(target=_reap, args=(pid, conn), daemon=True).start()


def _reap(pid: int, conn: socket.socket) -> None:
    """Report the child's stops (the tests' children stop themselves at chosen points) and its end."""
    while True:
        _, status = os.waitpid(pid, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            msg = {"stopped": os.WSTOPSIG(status)}
        else:
            msg = {"status": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}
        try:
            conn.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            pass
        if "status" in msg:
            conn.close()
            return


if __name__ == "__main__":
    _serve(sys.argv[1])
