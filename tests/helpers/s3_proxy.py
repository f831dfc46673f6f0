"""A loopback HTTP proxy in front of the moto server that injects S3 faults.

``FaultProxy(upstream)`` listens on 127.0.0.1:<free port> (its ``endpoint``) in a thread
of the test process and forwards every request to ``upstream`` unchanged, except while a
fault is armed (``arm``), for requests whose method and path match:

- ``"503"``: answer ``503 SlowDown`` (S3's throttling reply) without forwarding;
- ``"reset"``: close the connection without forwarding or answering (a reset);
- ``"drop"``: forward it (the write is applied), then close the connection without
  answering: the "write applied, response dropped" case a client must resolve itself.

``times`` bounds how many requests a fault hits (None: until ``clear``). ``hits`` counts
the requests each fault hit. Faults that cannot be made with moto alone; the client,
obstore, and the server are real.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    def __init__(self, upstream: str):
        u = urlsplit(upstream)
        self.up_host, self.up_port = u.hostname, u.port
        self._lock = threading.Lock()
        self._faults: list[dict] = []
        self.hits = {"503": 0, "reset": 0, "drop": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                fault = proxy._take(self.command, self.path)
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(SLOWDOWN)
                    return
                if fault == "reset":
                    self._reset()
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
                self.send_response(resp.status, resp.reason)
                length = str(len(data))
                for k, v in resp.getheaders():
                    if k.lower() == "content-length" and self.command == "HEAD":
                        length = v  # a HEAD's length is the object's, with no body
                    elif k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _reset(self):
                self.close_connection = True
                try:  # SO_LINGER 0: the close sends RST, not FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def arm(self, fault: str, method: str = ".*", path: str = ".*", times: int | None = None) -> None:
        """Inject ``fault`` into requests matching ``method`` and ``path`` (regexes)."""
        assert fault in self.hits
        with self._lock:
            self._faults.append({"fault": fault, "method": re.compile(method), "path": re.compile(path), "left": times})

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, method: str, path: str) -> str | None:
        with self._lock:
            for f in self._faults:
                if f["method"].fullmatch(method) and f["path"].search(path) and f["left"] != 0:
                    if f["left"] is not None:
                        f["left"] -= 1
                    self.hits[f["fault"]] += 1
                    return f["fault"]
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
