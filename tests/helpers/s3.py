"""A real S3 server for tests: ``moto`` in server mode on 127.0.0.1, in a subprocess.

:class:`MotoServer` starts ``python -m moto.server`` on a free port, waits until it
answers, and is stopped (SIGTERM, then SIGKILL) when the test session ends; the
``s3_server`` fixture (tests/conftest.py) shares one per session, and ``s3_url`` gives
each test its own prefix in one bucket plus the environment actstore reads
(``ACTSTORE_S3_ENDPOINT``, ``AWS_*`` credentials, few retries). moto >= 5.2.1 honours
``If-None-Match`` / ``If-Match`` on PUT and ranged GETs (each of which reads the whole
object there, so test shards stay tiny).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

BUCKET = "actstore-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class MotoServer:
    """``moto.server`` on 127.0.0.1:<free port> in a real subprocess."""

    def __init__(self, env: dict | None = None):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **CREDENTIALS, **(env or {})},
        )
        try:
            wait_port(self.port, proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def make_bucket(self, name: str, endpoint: str | None = None) -> None:
        req = urllib.request.Request(f"{endpoint or self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that points actstore (and its subprocesses) at ``endpoint``."""
    return {
        **CREDENTIALS,
        "ACTSTORE_S3_ENDPOINT": endpoint,
        "ACTSTORE_S3_RETRIES": "3",
        "ACTSTORE_S3_RETRY_SECONDS": "20",
    }


def fresh_url(bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/t-{uuid.uuid4().hex[:12]}"
