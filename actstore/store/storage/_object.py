"""A store in object storage (S3, GCS, Azure, S3-compatible servers) through ``obstore``.

``s3://bucket/prefix``, ``gs://bucket/prefix``, ``az://container/prefix`` (and obstore's
other spellings: ``s3a://``, ``azure://``, ``abfs://``). Credentials and regions come from
the standard environment variables, read by obstore (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``;
``GOOGLE_SERVICE_ACCOUNT``/``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_ACCOUNT_NAME``,
``AZURE_STORAGE_ACCOUNT_KEY``, ...). An S3-compatible server is named by
``ACTSTORE_S3_ENDPOINT`` (or the standard ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``); an
``http://`` endpoint is allowed without TLS.

Settings (environment, read when a storage is opened):

- ``ACTSTORE_S3_INFLIGHT`` (default 16): ranged gets kept in flight; readers size their
  pools to at least this. One S3 stream gives roughly 50-100 MB/s, so 1-5 GB/s takes
  about 16-100 (docs/guide/object-storage.md).
- ``ACTSTORE_S3_RETRIES`` (default 10) and ``ACTSTORE_S3_RETRY_SECONDS`` (default 60):
  obstore retries 5xx (503 SlowDown), dropped connections and timeouts with exponential
  backoff, at most this many times and this long per request; then a one-line error.
- ``ACTSTORE_S3_TIMEOUT_SECONDS`` (default 30, obstore's own default, a number): one attempt
  of a request, from connecting to the last byte of its answer, is abandoned after this
  long (a hung server, or a response that stalls mid-body) and retried as above, so a
  request that never answers ends in a one-line error after about ``RETRY_SECONDS`` plus
  this. A whole shard is one PUT and must fit in it: raise it for large shards over a slow
  uplink (a 128 MiB shard in 30 s needs about 4.5 MB/s). There is no separate stall
  (read) timeout: obstore's also fires while a long upload is still being sent (measured).
  Connecting is bounded by 5 s (or this, if smaller).
- ``ACTSTORE_CACHE_DIR`` and ``ACTSTORE_CACHE_GB``: a local whole-shard disk cache
  (:mod:`._cache`), off unless the directory is set.

Calls are synchronous; actstore calls them from its own thread pools (the writer's encode
pool, the reader's and the loader's decode pools), so several requests are in flight at
once. obstore is not safe across ``fork``: its runtime's threads stay in the parent, and a
forked child's requests hang. Each process builds its own client on first use (the pid is
checked on every call); a child forked after the parent used object storage gets a
one-line error naming the fix (``spawn``/``forkserver`` workers, or open the store only in
the workers, as ``ActivationDataset`` does); one forked before any use works.

Publishing (no locks in object storage): :meth:`write_if` is a conditional PUT,
``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace the version last seen. A
PUT whose response was lost is retried by obstore and then answered 412; it is resolved
here by reading the object back: the same bytes mean the first attempt landed. obstore
does not retry a conditional PUT that timed out (it may have landed): :meth:`write_if`
retries it itself, within the same limits, and the read-back resolves it the same way.
"""

from __future__ import annotations

import os
import re
import threading
import time

from ..errors import MissingObjectError, StoreError
from ._base import Blob, Storage, VersionConflict, check_key
from ._cache import ShardCache

SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "adl")  # as storage.OBJECT_SCHEMES

_GET = 16 << 20  # one ranged get: runs of whole chunks up to 16 MiB (8-16 MiB fill an S3 stream)
_USED_IN: int | None = None  # the process whose obstore runtime is running (see _client)
# How obstore (reqwest, hyper) words a failed request, after its own retries:
_UNREACHABLE = ("kind: Connect", "Connection refused", "dns error", "connect error", "tcp connect")
_TIMED_OUT = ("kind: Timeout", "TimedOut", "timed out")
_DROPPED = (
    "IncompleteMessage",
    "connection reset",
    "Connection reset",
    "connection closed",
    "body error",
    "error sending request",
)
_GAP = 1 << 20  # chunks at most this far apart are fetched in one get (a round trip costs more)


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise StoreError(f"{name}={v!r} is not an integer; set it to a whole number") from None


def _env_seconds(name: str, default: float) -> float:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        x = float(v)
    except ValueError:
        x = float("nan")
    if not x > 0 or x == float("inf"):
        raise StoreError(f"{name}={v!r} is not a positive number of seconds; set it to e.g. 30") from None
    return x


def _timed_out(text: str) -> bool:
    """A request that got no (complete) answer in time: no HTTP status, a timeout."""
    return "status code:" not in text and any(s in text for s in _TIMED_OUT)


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _need_obstore():
    try:
        import obstore  # noqa: F401
    except ImportError:
        from ...errors import DependencyError

        raise DependencyError("object storage needs the obstore package: pip install 'actstore[s3]'") from None
    import obstore

    return obstore


class _ObjectBlob(Blob):
    """One version of one object: its ETag pins every ranged get (``If-Match``)."""

    def __init__(self, st: "ObjectStorage", key: str, whole: bool):
        self._st, self._key = st, key
        self._data = None
        if whole:
            self._data, self.etag = st._get_whole(key)
            self.size = len(self._data)
            return
        meta = st._head(key)
        if meta is None:
            raise st._missing(key)
        self.size, self.etag = int(meta["size"]), meta.get("e_tag")

    def pread(self, offset: int, length: int):
        if self._data is not None:
            return memoryview(self._data)[offset : offset + length]
        end = min(self.size, offset + length)
        if end <= offset:
            return b""
        opts = {"range": (offset, end)}
        if self.etag:
            opts["if_match"] = self.etag
        path = self._st._path(self._key)
        return self._st._call("read", self._key, lambda s, ob: ob.get(s, path, options=opts).bytes())

    def close(self) -> None:
        self._data = None


class ObjectStorage(Storage):
    """Object storage through obstore; see the module docstring."""

    supports_lock = False  # no locks in object storage: writers hold a lease (store/lease.py)
    atomic_rename = False  # a PUT is atomic by itself
    conditional_put = True
    versioned_put = True
    max_gap_bytes = _GAP
    max_get_bytes = _GET

    def __init__(self, url: str):
        self._ob = _need_obstore()
        self.url = url.rstrip("/")
        self.scheme = self.url.split("://", 1)[0].lower()
        if self.scheme not in SCHEMES:
            raise StoreError(f"unsupported object storage scheme {self.scheme!r}: use s3://, gs:// or az://")
        rest = self.url.split("://", 1)[1]
        if not rest or rest.startswith("/"):
            raise StoreError(f"store URL {url!r} names no bucket: use {self.scheme}://BUCKET/PREFIX")
        self.bucket = rest.split("/", 1)[0]
        self.endpoint = None
        if self.scheme in ("s3", "s3a"):
            self.endpoint = (
                os.environ.get("ACTSTORE_S3_ENDPOINT")
                or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
                or None
            )
        self.inflight = max(1, _env_int("ACTSTORE_S3_INFLIGHT", 16))
        self.retries = max(0, _env_int("ACTSTORE_S3_RETRIES", 10))
        self.retry_seconds = max(1, _env_int("ACTSTORE_S3_RETRY_SECONDS", 60))
        self.timeout = _env_seconds("ACTSTORE_S3_TIMEOUT_SECONDS", 30.0)
        cache_dir = os.environ.get("ACTSTORE_CACHE_DIR")
        gb = os.environ.get("ACTSTORE_CACHE_GB", "50")
        try:
            cap = int(float(gb) * 2**30)
        except ValueError:
            raise StoreError(f"ACTSTORE_CACHE_GB={gb!r} is not a number of GB") from None
        self.cache = ShardCache(cache_dir, cap) if cache_dir else None
        self._pid = -1
        self._store = None
        self._build_lock = threading.Lock()
        self._client()  # configuration errors now, in one line, not at the first read

    # -- the client, one per process --------------------------------------------------------

    def _client(self):
        if self._pid != os.getpid():  # first use, or a forked child: never share a client across fork
            global _USED_IN
            if _USED_IN is not None and _USED_IN != os.getpid():
                # obstore's runtime threads stay in the parent: a forked child's requests
                # would hang forever (measured: a HEAD never returned), so say so instead.
                raise StoreError(
                    f"{self.url}: object storage was used in the parent process before this fork, and obstore "
                    "cannot run in a forked child; start workers with 'spawn' or 'forkserver' (DataLoader("
                    "multiprocessing_context='spawn')), or open the store only inside the workers"
                )
            with self._build_lock:
                if self._pid != os.getpid():
                    self._store = self._build()
                    self._pid = os.getpid()
                    _USED_IN = os.getpid()
        return self._store

    def _build(self):
        from datetime import timedelta

        from obstore.store import from_url

        kwargs = {}
        client = {
            "timeout": timedelta(seconds=self.timeout),
            "connect_timeout": timedelta(seconds=min(5.0, self.timeout)),
        }
        if self.endpoint:
            kwargs["endpoint"] = self.endpoint
            if self.endpoint.startswith("http://"):
                client["allow_http"] = True
        retry = {
            "max_retries": self.retries,
            "retry_timeout": timedelta(seconds=self.retry_seconds),
            "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=5), "base": 2},
        }
        try:
            return from_url(self.url, client_options=client, retry_config=retry, **kwargs)
        except Exception as e:  # obstore raises its own config errors and ValueError
            raise StoreError(
                f"cannot configure object storage {self.url} ({_first_line(e)}); check the URL and settings"
            ) from None

    def __getstate__(self):
        # Pickled into spawned workers: the client is rebuilt there, never sent.
        state = dict(self.__dict__)
        state["_store"], state["_pid"], state["_build_lock"], state["_ob"] = None, -1, None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._build_lock = threading.Lock()
        self._ob = _need_obstore()

    # -- errors -----------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return check_key(key)

    def _missing(self, key: str) -> StoreError:
        return MissingObjectError(f"missing object {key!r} in store {self.url}")

    def _error(self, what: str, key: str, e: BaseException) -> StoreError:
        """One line for a failed request: the cause a user can act on, then what to do."""
        ex = self._ob.exceptions
        full = str(e)
        # obstore's text is long (URL, retries, XML body): keep the status and S3's error code.
        status = re.search(r"status code: (\d{3}[A-Za-z ]*)", full)
        code = re.search(r"<Code>(\w+)</Code>", full)
        msg = ", ".join(m.group(1).strip() for m in (status, code) if m) or _first_line(e)
        where = f"{what} {key!r} in {self.url}"
        if isinstance(e, (ex.PermissionDeniedError, ex.UnauthenticatedError)) or any(
            s in full for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden")
        ):
            return StoreError(
                f"{where}: access denied ({msg[:120]}); check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,"
                " GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY) and the bucket policy"
            )
        if "NoSuchBucket" in full or "ContainerNotFound" in full or isinstance(e, FileNotFoundError):
            return StoreError(f"{where}: bucket {self.bucket!r} does not exist; create it or fix the URL")
        if any(s in full for s in _UNREACHABLE):
            return StoreError(
                f"{where}: cannot reach the endpoint {self.endpoint or 'of ' + self.scheme} ({msg[:120]}); check "
                "ACTSTORE_S3_ENDPOINT / AWS_ENDPOINT_URL and the network"
            )
        if _timed_out(full):
            return StoreError(
                f"{where} timed out: no complete answer within ACTSTORE_S3_TIMEOUT_SECONDS={self.timeout:g} s, "
                f"{self.retries} retries at most; check the service and the network, raise the timeout for large "
                "shards on a slow link, then retry (committed rows are intact)"
            )
        if status is None and any(s in full for s in _DROPPED):  # no answer: the connection broke
            return StoreError(
                f"{where} failed after {self.retries} retries (the connection was dropped); check the service and "
                "the network, then retry (committed rows are intact)"
            )
        if isinstance(e, ex.PreconditionError):
            return StoreError(
                f"{where} changed while being read (its ETag no longer matches); reopen the store to read the new "
                "version"
            )
        return StoreError(
            f"{where} failed after {self.retries} retries ({msg}); check the service, then retry (committed rows "
            "are intact)"
        )

    def _call(self, what: str, key: str, fn):
        try:
            return fn(self._client(), self._ob)
        except FileNotFoundError as e:
            if "NoSuchBucket" in str(e) or "ContainerNotFound" in str(e):  # a 404 of the bucket, not the key
                raise self._error(what, key, e) from None
            raise self._missing(key) from None
        except StoreError:
            raise
        except Exception as e:
            raise self._error(what, key, e) from None

    def _head(self, key: str) -> dict | None:
        try:
            return self._call("head", key, lambda s, ob: ob.head(s, self._path(key)))
        except MissingObjectError:
            return None

    def _get_whole(self, key: str):
        def get(s, ob):
            r = ob.get(s, self._path(key))
            return r.bytes(), r.meta.get("e_tag")

        return self._call("read", key, get)

    # -- the contract -----------------------------------------------------------------------

    @staticmethod
    def _joined(data):
        if isinstance(data, (list, tuple)):
            # One single-part PUT: conditional PUTs cannot be multipart, and a shard is bounded.
            return b"".join(bytes(p) if not isinstance(p, (bytes, bytearray)) else p for p in data)
        return data

    def read(self, key: str) -> bytes:
        return bytes(self._get_whole(key)[0])

    def write_atomic(self, key: str, data) -> None:
        body = self._joined(data)
        self._call("write", key, lambda s, ob: ob.put(s, self._path(key), body, mode="overwrite", use_multipart=False))

    def write_if(self, key: str, data, expect: str | None) -> str:
        body = self._joined(data)
        mode = "create" if expect is None else {"e_tag": expect}
        ex = self._ob.exceptions
        end, retries = time.monotonic() + self.retry_seconds, 0
        while True:
            try:
                r = self._client()
                got = self._ob.put(r, self._path(key), body, mode=mode, use_multipart=False)
                return got.get("e_tag") or ""
            except (ex.AlreadyExistsError, ex.PreconditionError):
                break
            except FileNotFoundError as e:
                raise self._error("write", key, e) from None  # a PUT's 404 is the bucket's
            except Exception as e:
                # A timed-out conditional PUT may have landed, so obstore does not retry it.
                # Retrying is safe here: a 412 is then resolved by the read-back below.
                if retries >= self.retries or time.monotonic() >= end or not _timed_out(str(e)):
                    raise self._error("write", key, e) from None
                time.sleep(min(5.0, 0.05 * 2**retries))
                retries += 1
        # 412: another version is there. Ours, if our PUT landed and only its response was
        # lost (obstore retried it): then the object holds exactly our bytes.
        try:
            current, etag = self._get_whole(key)
        except MissingObjectError:
            raise VersionConflict(f"object {key!r} in {self.url} vanished during a conditional put", None) from None
        if bytes(current) == bytes(body):
            return etag or ""
        what = "already exists" if expect is None else f"is at ETag {etag}, not {expect}"
        raise VersionConflict(f"object {key!r} in {self.url} {what}", etag)

    def write_exclusive(self, key: str, data) -> bool:
        try:
            self.write_if(key, data, None)
            return True
        except VersionConflict:
            return False

    def version(self, key: str) -> str | None:
        meta = self._head(key)
        return None if meta is None else (meta.get("e_tag") or "")

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        meta = self._head(key)
        if meta is None:
            raise self._missing(key)
        return int(meta["size"])

    def list(self, prefix: str) -> list[str]:
        head = f"{check_key(prefix)}/" if prefix else ""
        got = self._call("list", prefix, lambda s, ob: ob.list_with_delimiter(s, prefix or None))
        names = {p[len(head) :].split("/", 1)[0] for p in got["common_prefixes"]}
        names |= {o["path"][len(head) :].split("/", 1)[0] for o in got["objects"]}
        return sorted(n for n in names if n)

    def _objects(self, prefix: str) -> list[dict]:
        head = f"{check_key(prefix)}/" if prefix else None

        def walk(s, ob):
            return [m for batch in ob.list(s, prefix=head) for m in batch]

        return self._call("list", prefix, walk)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda s, ob: ob.delete(s, self._path(key)))

    def delete_prefix(self, prefix: str) -> None:
        paths = [m["path"] for m in self._objects(prefix)]
        for i in range(0, len(paths), 1000):
            part = paths[i : i + 1000]
            self._call("delete", prefix, lambda s, ob, part=part: ob.delete(s, part))

    def total_bytes(self, prefix: str = "") -> int:
        return sum(int(m["size"]) for m in self._objects(prefix))

    def open_blob(self, key: str, *, whole: bool = False) -> Blob:
        check_key(key)
        if self.cache is not None and not whole:
            meta = self._head(key)
            if meta is None:
                raise self._missing(key)
            return self.cache.open(self, key, meta.get("e_tag") or "", int(meta["size"]))
        return _ObjectBlob(self, key, whole)
