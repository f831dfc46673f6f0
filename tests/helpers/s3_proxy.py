"""A loopback HTTP proxy in front of the moto server that injects S3 faults.

``FaultProxy(upstream)`` listens on 127.0.0.1:<free port> (its ``endpoint``) in a thread
of the test process and forwards every request to ``upstream`` unchanged, except for the
requests that an armed rule (:meth:`FaultProxy.arm`) matches. Faults:

- ``"503"``: answer ``503 SlowDown`` (S3's throttling reply) without forwarding;
- ``"reset"``: close the connection without forwarding or answering (a reset);
- ``"drop"``: forward it (the write is applied), then close the connection without
  answering: the "write applied, response dropped" case a client must resolve itself;
- ``"slow"``: forward it, then wait ``delay`` seconds before answering (a slow server);
- ``"hung"``: accept the request and never answer (no status line) until the proxy stops;
- ``"lost"``: forward it (a write is applied), then never answer: the client times out on a
  write that landed;
- ``"stall"``: forward it, send the status line, the headers and half of the body, then
  send nothing more until the proxy stops (a stream that stalls mid-body).

Which requests a rule hits: ``method`` and ``path`` are regexes (``fullmatch`` on the
method, ``search`` on the path, which is ``/<bucket>/<key>?<query>``); ``ranged`` (True or
False) asks for a ``Range`` header, or none. :data:`KINDS` names the request kinds the
tests target (``proxy.arm("503", kind="shard-get")``): GETs of shard objects
(``.../c/<n>[/0]``), ranged GETs, PUTs of shards, PUTs of commit records
(``.../commits/<seq>/zarr.json``). Counts: of the matching requests, a rule hits every
``every``-th (1: each), at most ``times`` of them (None: until :meth:`clear`); so
``times=2`` fails the first two, ``every=3`` every third.

``hits`` counts the requests each fault hit (and each rule's ``hits``, returned by
``arm``); ``seen`` logs every request ``(method, path, ranged)``. The faults are ones moto
alone cannot make; the client, obstore, and the server are real.
"""

from __future__ import annotations

import http.client
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
FAULTS = ("503", "reset", "drop", "slow", "hung", "lost", "stall")

# Shard objects: zarr's default chunk key, "c/<shard>/0" for (rows, d) arrays, "c/<shard>"
# for the token columns (store/format.py shard_key), with the query string, if any, after it.
SHARD = r"/c/\d+(/0)*(\?|$)"
COMMIT = r"/commits/\d+/zarr\.json(\?|$)"
KINDS = {
    "shard-get": {"method": "GET", "path": SHARD},
    "ranged-get": {"method": "GET", "ranged": True},
    "shard-put": {"method": "PUT", "path": SHARD},
    "commit-put": {"method": "PUT", "path": COMMIT},
}


@dataclass
class Rule:
    fault: str
    method: re.Pattern
    path: re.Pattern
    ranged: bool | None = None
    times: int | None = None
    every: int = 1
    delay: float = 0.0
    matched: int = 0  # matching requests seen
    hits: int = 0  # of them, the ones faulted
    paths: list = field(default_factory=list)  # the paths faulted

    def take(self, method: str, path: str, ranged: bool) -> bool:
        if not (self.method.fullmatch(method) and self.path.search(path)):
            return False
        if self.ranged is not None and self.ranged != ranged:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.matched += 1
        if self.matched % self.every:
            return False
        self.hits += 1
        self.paths.append(path)
        return True


class FaultProxy:
    def __init__(self, upstream: str):
        u = urlsplit(upstream)
        self.up_host, self.up_port = u.hostname, u.port
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._release = threading.Event()  # set at stop: hung and stalled responses end
        self.hits = dict.fromkeys(FAULTS, 0)
        self.seen: list[tuple[str, str, bool]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                rule = proxy._take(self.command, self.path, "Range" in self.headers)
                fault = rule.fault if rule else None
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    if self.command != "HEAD":  # a HEAD's answer has no body
                        self.wfile.write(SLOWDOWN)
                    return
                if fault == "reset":
                    self._reset()
                    return
                if fault == "hung":
                    self._hang()
                    return
                conn = http.client.HTTPConnection(proxy.up_host, proxy.up_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "drop":  # applied upstream; the client never hears
                    self._reset()
                    return
                if fault == "lost":  # applied upstream; the client waits for an answer in vain
                    self._hang()
                    return
                if fault == "slow" and proxy._release.wait(rule.delay):
                    return  # the proxy is stopping
                self.send_response(resp.status, resp.reason)
                length = str(len(data))
                for k, v in resp.getheaders():
                    if k.lower() == "content-length" and self.command == "HEAD":
                        length = v  # a HEAD's length is the object's, with no body
                    elif k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault == "stall":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._hang()
                    return
                self.wfile.write(data)

            def _hang(self):
                """Say nothing more until the proxy stops (the client gives up first)."""
                self.close_connection = True
                proxy._release.wait()

            def _reset(self):
                self.close_connection = True
                try:  # SO_LINGER 0: the close sends RST, not FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], OSError):  # a client that gave up is expected here
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def arm(
        self,
        fault: str,
        method: str = ".*",
        path: str = ".*",
        times: int | None = None,
        *,
        kind: str | None = None,
        ranged: bool | None = None,
        every: int = 1,
        delay: float = 0.0,
    ) -> Rule:
        """Inject ``fault`` into the requests matching ``method``/``path`` (regexes) or
        ``kind`` (a name in :data:`KINDS`), and ``ranged``: every ``every``-th of them, at
        most ``times`` (None: until :meth:`clear`). ``delay``: the seconds a ``"slow"``
        fault waits. Rules are tried in the order armed; the first that hits wins."""
        assert fault in FAULTS, fault
        assert every >= 1
        if kind is not None:
            spec = KINDS[kind]
            method, path = spec.get("method", method), spec.get("path", path)
            ranged = spec.get("ranged", ranged)
        rule = Rule(fault, re.compile(method), re.compile(path), ranged, times, every, delay)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _take(self, method: str, path: str, ranged: bool) -> Rule | None:
        with self._lock:
            self.seen.append((method, path, ranged))
            for r in self._rules:
                if r.take(method, path, ranged):
                    self.hits[r.fault] += 1
                    return r
        return None

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


def bounded(seconds: float, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on a daemon thread: its result or its exception, or a test
    failure if it has not returned after ``seconds`` (a guard against hanging forever, like
    pytest-timeout, not a timing assertion: choose ``seconds`` generously)."""
    import pytest

    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} still running after {seconds} s: it hangs")
    if "error" in box:
        raise box["error"]
    return box["value"]
