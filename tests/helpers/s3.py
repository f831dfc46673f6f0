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
import urllib.error
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
    """``moto.server`` on 127.0.0.1:<free port> in a real subprocess.

    ``wait=False`` returns at once (the test run's shared server starts in the background while
    pytest collects); :meth:`ready` waits for it."""

    def __init__(self, env: dict | None = None, wait: bool = True):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **CREDENTIALS, **(env or {})},
        )
        if wait:
            self.ready()

    def ready(self) -> None:
        try:
            wait_port(self.port, proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def make_bucket(self, name: str, endpoint: str | None = None) -> None:
        make_bucket(endpoint or self.endpoint, name)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s: a test server or the test zygote, at the run's end."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_bucket(endpoint: str, name: str) -> None:
    """Create bucket ``name``; one that this account already owns is fine (shared server)."""
    req = urllib.request.Request(f"{endpoint}/{name}", method="PUT")
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except urllib.error.HTTPError as e:
        if e.code != 409:  # BucketAlreadyOwnedByYou: another worker made it first
            raise


class SharedMoto:
    """The run's one moto server, started by the pytest controller (tests/conftest.py), as seen
    from a test process (an xdist worker, or the controller itself): its ``endpoint``."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.port = int(endpoint.rsplit(":", 1)[1])
        wait_port(self.port)

    def make_bucket(self, name: str, endpoint: str | None = None) -> None:
        make_bucket(endpoint or self.endpoint, name)


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
