"""`BucketStore`: checkpoint objects under an fsspec URL (`s3://`, `gs://`).

A bucket has no rename, so a checkpoint is published as ONE object put only
if absent: S3 `PutObject` with `If-None-Match: *`, GCS a multipart upload
with `ifGenerationMatch=0`. The object appears whole or not at all, and a
committed object is never overwritten (`FileExistsError`).

Credentials and endpoints come from the standard places only: botocore's
(`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, ...,
`~/.aws`) for S3; `STORAGE_EMULATOR_HOST` and Google application
credentials for GCS. `storage_options` are passed to fsspec for the rest.

**One writer: the lease.** `open()` creates `<prefix>/.lease` with the same
conditional put. It holds JSON (owner token, host, pid, expiry time). A
daemon thread renews it every `lease_seconds / 6` (20 s by default) with a
put conditional on the version it last wrote (S3 `If-Match: <etag>`, GCS
`ifGenerationMatch=<generation>`); `close()` deletes it. A second process
finds a live lease and gets `RuntimeError` naming the URL and the holder; the
first goes on. A lease whose holder stopped renewing expires `lease_seconds`
(default 120, env `RESUMABLE_SCHEDULER_LEASE_SECONDS`) after its last
renewal, and is then taken over by a put conditional on the version read,
so of two takers exactly one wins. On the same machine (same boot, same PID
namespace) a lease whose process is gone is taken over at once, so a killed
run restarts without waiting. Elsewhere, `open()` refuses a live lease at
once, or waits for it up to `lease_wait` seconds (env
`RESUMABLE_SCHEDULER_LEASE_WAIT`; e.g. a preempted VM's replacement can set
it to `lease_seconds`). Expiry compares the holder's clock with the taker's:
clocks are assumed in sync to well under `lease_seconds`.

**Fencing** (what a holder that lost its lease, e.g. after a long pause,
cannot do):

- enforced by the server, on AWS S3, GCS, moto and fake-gcs-server: lease
  creation, renewal and takeover (conditional puts); checkpoint commits never
  overwrite (create-only puts). `open()` checks that the server enforces
  them (a second create-only put of the lease must fail) and warns if not;
- the lease deletion at `close()` is a conditional delete (S3 `If-Match`,
  GCS `ifGenerationMatch`): enforced by GCS and moto, NOT by fake-gcs-server
  (it ignores preconditions on DELETE); an S3 server that rejects `If-Match`
  on DeleteObject gets a plain delete;
- by this process only: checkpoint commits and deletes are refused once a
  renewal found the lease taken, and a commit or delete first renews the lease
  synchronously when the last renewal is older than `lease_seconds / 2`; a
  write that starts with at least half the lease left, and takes less than
  that, ends before anyone can take over.

Concurrency contract: one `BucketStore` per `fit`, not thread-safe (its own
renewal thread excepted); multi-process safe through the lease.

Other fsspec URLs (`memory://`, `az://`, ...) work through fsspec's own
`pipe_file(mode="create")`, which is not atomic on most of them; the lease
is then best effort, with a warning.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import secrets
import socket
import threading
import time
import uuid
import warnings
from typing import Any

LEASE_NAME = ".lease"
LEASE_SECONDS_ENV = "RESUMABLE_SCHEDULER_LEASE_SECONDS"
LEASE_WAIT_ENV = "RESUMABLE_SCHEDULER_LEASE_WAIT"
DEFAULT_LEASE_SECONDS = 120.0
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
_RACE_ATTEMPTS = 20


class _Conflict(Exception):
    """A conditional write or delete whose precondition did not hold."""


def _import_fsspec(url: str):
    protocol = url.split("://", 1)[0].lower()
    extra = _EXTRAS.get(protocol)
    try:
        import fsspec

        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        what = f'pip install "resumable-scheduler[{extra}]"' if extra else "pip install fsspec and its back end"
        raise ImportError(f"backup_dir={url!r} needs the {protocol}:// file system: {what} ({exc})") from exc
    return fsspec


def _seconds(value: float | None, env: str, default: float, name: str) -> float:
    if value is None:
        text = os.environ.get(env)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"Invalid value for environment variable {env}. Received: {text!r}. Expected seconds."
            ) from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected seconds >= 0."
        )
    return float(value)


class BucketStore:
    """Checkpoint objects under an fsspec URL, one writer by a lease.

    Args:
        location: str. `s3://bucket/prefix`, `gs://bucket/prefix`, or any
            fsspec URL. The bucket must exist.
        lease_seconds: float. How long a lease lasts without renewal; the
            bound after which a killed holder's lease is taken over. Default
            from `RESUMABLE_SCHEDULER_LEASE_SECONDS`, else 120.
        lease_wait: float. How long `open()` waits for a live lease to be
            released or to expire before raising. Default from
            `RESUMABLE_SCHEDULER_LEASE_WAIT`, else 0 (refuse at once).
        storage_options: dict. Extra arguments for the fsspec file system.

    Example:

    >>> store = BucketStore("memory://rs-doc/run", lease_seconds=30)
    >>> store.describe("ckpt-00000001-00000000.weights.h5")
    'memory:///rs-doc/run/ckpt-00000001-00000000.weights.h5'
    """

    def __init__(
        self,
        location: str,
        *,
        lease_seconds: float | None = None,
        lease_wait: float | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.location = str(location)
        self.lease_seconds = _seconds(lease_seconds, LEASE_SECONDS_ENV, DEFAULT_LEASE_SECONDS, "lease_seconds")
        if self.lease_seconds == 0:
            raise ValueError(
                "Invalid value for argument `lease_seconds`. Received: lease_seconds=0. Expected seconds > 0."
            )
        self.lease_wait = _seconds(lease_wait, LEASE_WAIT_ENV, 0.0, "lease_wait")
        fsspec = _import_fsspec(self.location)
        self.fs, path = fsspec.core.url_to_fs(self.location, **(storage_options or {}))
        self._path = path.rstrip("/")
        if not self._path:
            raise ValueError(
                f"Invalid value for argument `backup_dir`. Received: backup_dir={self.location!r}. "
                "Expected a URL with a bucket, e.g. s3://bucket/run."
            )
        self._ops = _ops_for(self.fs)
        self._token = secrets.token_hex(16)
        self._lock = threading.Lock()
        self._tag: str | None = None  # version of the lease object we last wrote
        self._expires = 0.0  # our lease's expiry (time.time())
        self._renewals = 0
        self._lost: str | None = None  # why the lease is no longer ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- paths -------------------------------------------------------------

    def _key(self, name: str) -> str:
        if not name or "/" in name or name in (".", "..", LEASE_NAME):
            raise ValueError(f"Invalid object name {name!r} in backup_dir={self.location!r}.")
        return f"{self._path}/{name}"

    @property
    def lease_url(self) -> str:
        return self.fs.unstrip_protocol(f"{self._path}/{LEASE_NAME}")

    def describe(self, name: str) -> str:
        return self.fs.unstrip_protocol(self._key(name))

    # -- objects -----------------------------------------------------------

    def names(self) -> list[str]:
        self.fs.invalidate_cache(self._path)
        try:
            entries = self.fs.ls(self._path, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            if entry.get("type") != "file":
                continue
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if name != LEASE_NAME:
                out.append(name)
        return out

    def read(self, name: str) -> bytes:
        try:
            return self.fs.cat_file(self._key(name))
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - clients raise their own types
            raise OSError(f"Cannot read {self.describe(name)}: {type(exc).__name__}: {exc}") from exc

    def exists(self, name: str) -> bool:
        path = self._key(name)
        self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    def commit(self, name: str, data: bytes) -> None:
        path = self._key(name)
        self._fence()
        try:
            self._ops.put(path, bytes(data) if not isinstance(data, bytes) else data, if_absent=True)
        except _Conflict:
            raise FileExistsError(
                f"{self.describe(name)} exists: a committed checkpoint is never overwritten."
            ) from None
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise OSError(f"Cannot commit {self.describe(name)}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.fs.invalidate_cache(self._path)

    def delete(self, name: str) -> None:
        path = self._key(name)
        self._fence()
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(self._path)

    def remove_all(self) -> None:
        """Deletes every object under the prefix, then gives the lease back
        (a later `close()` does nothing). Without the lease held by this
        store, a lease object found there is left alone."""
        held = self._tag is not None
        if held:
            self._fence()
        for name in self.names():
            if held:
                self._fence()
            try:
                self.fs.rm_file(f"{self._path}/{name}")
            except FileNotFoundError:
                pass
        self.close()
        self.fs.invalidate_cache(self._path)

    # -- the lease ---------------------------------------------------------

    def open(self) -> None:
        if self._tag is not None:
            return
        if isinstance(self._ops, _GenericOps):
            warnings.warn(
                f"backup_dir={self.location!r}: {self.fs.protocol!r} has no conditional writes here; "
                "the one-writer lease and create-only commits are best effort.",
                stacklevel=2,
            )
        self._pid = os.getpid()
        self._lost = None
        self._acquire()
        try:
            self._check_preconditions()
            self._stop.clear()
            self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.lease_url}", daemon=True)
            self._thread.start()
            atexit.register(self.close)
        except BaseException:
            self.close()
            raise
        self._abort_leftovers()

    def close(self) -> None:
        thread, self._thread = self._thread, None
        atexit.unregister(self.close)
        if os.getpid() != self._pid:  # a forked child: the lease is its parent's
            self._tag = None
            return
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        with self._lock:
            tag, self._tag = self._tag, None
            if tag is None or self._lost:
                return  # not ours (lost)
            try:
                self._ops.delete(f"{self._path}/{LEASE_NAME}", if_match=tag)
            except (_Conflict, FileNotFoundError):
                pass  # taken over meanwhile: not ours to delete
            except Exception as exc:  # noqa: BLE001 - it expires anyway
                warnings.warn(
                    f"Could not delete the lease {self.lease_url} ({exc}); it expires by itself.", stacklevel=2
                )

    def _lease_doc(self) -> bytes:
        now = time.time()
        doc = {
            "format": "resumable_scheduler.lease/1",
            "owner": self._token,
            "host": socket.gethostname(),
            "machine": _machine_id(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "renewal": self._renewals,
            "written": now,
            "expires": now + self.lease_seconds,
            "lease_seconds": self.lease_seconds,
            "location": self.location,
        }
        return json.dumps(doc, sort_keys=True).encode()

    def _write_lease(self, *, if_absent: bool = False, if_match: str | None = None) -> None:
        """One conditional write of our lease; sets `_tag` and `_expires`."""
        body = self._lease_doc()
        expires = json.loads(body)["expires"]
        self._tag = self._ops.put(f"{self._path}/{LEASE_NAME}", body, if_absent=if_absent, if_match=if_match)
        self._expires = expires
        self._renewals += 1

    def _acquire(self) -> None:
        deadline = time.monotonic() + self.lease_wait
        path = f"{self._path}/{LEASE_NAME}"
        for _ in range(_RACE_ATTEMPTS + int(self.lease_wait * 2)):
            try:
                with self._lock:
                    self._write_lease(if_absent=True)
                return
            except _Conflict:
                pass
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    f"backup_dir={self.location!r}: the bucket does not exist ({exc})."
                ) from exc
            try:
                data, tag = self._ops.get(path)
            except FileNotFoundError:
                continue  # released meanwhile: try to create it again
            holder = _parse_lease(data)
            if holder.get("owner") == self._token:  # a retried create of ours
                with self._lock:
                    self._tag, self._expires = tag, float(holder["expires"])
                return
            why = _takeover_reason(holder)
            if why is not None:
                try:
                    with self._lock:
                        self._write_lease(if_match=tag)
                except _Conflict:
                    continue  # another taker won, or the holder renewed: look again
                warnings.warn(f"Took over the lease {self.lease_url} from {_who(holder)}: {why}.", stacklevel=3)
                return
            if time.monotonic() < deadline:
                time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
                continue
            raise RuntimeError(self._busy_message(holder))
        raise RuntimeError(
            f"Could not take the lease {self.lease_url}: it kept changing. "
            f"Is another process starting with backup_dir={self.location!r}?"
        )

    def _check_preconditions(self) -> None:
        """One more create-only put of the lease we hold: a server that lets
        it through ignores preconditions (some S3-compatible stores do), and
        nothing above holds there; say so."""
        if isinstance(self._ops, _GenericOps):
            return
        try:
            with self._lock:
                self._write_lease(if_absent=True)
        except _Conflict:
            return
        warnings.warn(
            f"backup_dir={self.location!r}: the server ignored a create-only write (S3 If-None-Match, GCS "
            "ifGenerationMatch=0), so two writers are not kept apart and a commit could overwrite a checkpoint.",
            stacklevel=3,
        )

    def _busy_message(self, holder: dict[str, Any]) -> str:
        expires = float(holder.get("expires", 0.0))
        when = datetime.datetime.fromtimestamp(expires, datetime.timezone.utc).isoformat(timespec="seconds")
        return (
            f"Another process is training with backup_dir={self.location!r}: {_who(holder)} holds the lease "
            f"{self.lease_url} until {when} (in {max(0.0, expires - time.time()):.0f} s) and renews it while it runs. "
            "Only one process may write a backup at a time. If that process is dead, start again after that "
            f"time (or set {LEASE_WAIT_ENV}), or delete {self.lease_url}."
        )

    def _renew(self) -> None:
        """Renews our lease now (conditional on the version we wrote)."""
        with self._lock:
            if self._lost:
                raise RuntimeError(self._lost)
            if self._tag is None:
                raise RuntimeError(f"backup_dir={self.location!r} is not open: open() takes the lease first.")
            try:
                self._write_lease(if_match=self._tag)
            except (_Conflict, FileNotFoundError):
                self._lost = (
                    f"Lost the lease {self.lease_url} of backup_dir={self.location!r}: another process took it over "
                    f"(this one did not renew it within {self.lease_seconds:g} s). Stopped writing."
                )
                raise RuntimeError(self._lost) from None

    def _renew_loop(self) -> None:
        interval = max(0.2, self.lease_seconds / 6)
        while not self._stop.wait(interval):
            try:
                self._renew()
            except RuntimeError:
                return  # lost: the next commit raises
            except Exception as exc:  # noqa: BLE001 - retried at the next tick
                if time.time() > self._expires - self.lease_seconds / 2:
                    warnings.warn(f"Could not renew the lease {self.lease_url}: {exc}", stacklevel=1)

    def _fence(self) -> None:
        """Refuses to write without the lease; renews it first if the last
        renewal is older than half a lease."""
        if self._lost:
            raise RuntimeError(self._lost)
        if self._tag is None or os.getpid() != self._pid:
            raise RuntimeError(
                f"backup_dir={self.location!r} is not open: open() takes the lease before any write."
            )
        if time.time() > self._expires - self.lease_seconds / 2:
            self._renew()

    def _abort_leftovers(self) -> None:
        try:
            aborted = self._ops.abort_uploads(self._path + "/")
        except Exception:  # noqa: BLE001 - leftovers are invisible and harmless
            return
        if aborted:
            warnings.warn(f"Aborted {aborted} interrupted upload(s) under {self.location}.", stacklevel=3)


# -- lease helpers -----------------------------------------------------------


def _parse_lease(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    try:
        doc["expires"] = float(doc.get("expires", 0.0))
    except (TypeError, ValueError):
        doc["expires"] = 0.0
    return doc


def _who(holder: dict[str, Any]) -> str:
    return f"host {str(holder.get('host', '?'))[:100]!r} pid {str(holder.get('pid', '?'))[:20]}"


def _takeover_reason(holder: dict[str, Any]) -> str | None:
    """Why the lease in `holder` may be taken over, or None if it is live."""
    if not holder:
        return "the lease object is not a lease"
    late = time.time() - holder["expires"]
    if late >= 0:
        return f"it expired {late:.1f} s ago"
    if holder.get("machine") == _machine_id() and _machine_id():
        pid = holder.get("pid")
        if isinstance(pid, int) and not _alive(pid, holder.get("process_start")):
            return f"its process (pid {pid}) on this machine is gone"
    return None


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _machine_id() -> str:
    """This boot of this machine and this PID namespace ('' where unknown)."""
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}:{ns}" if boot else ""


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name ([] where unknown)."""
    return _read_text(f"/proc/{pid}/stat").rpartition(")")[2].split()


def _process_start(pid: int) -> str:
    """The start time of `pid` in clock ticks since boot ('' where unknown)."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


def _alive(pid: int, started: Any) -> bool:
    """Whether `pid` on this machine is still the process that wrote the
    lease (a zombie, or a new process with a reused pid, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return True
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False
    return not started or _process_start(pid) == started


# -- per-protocol conditional operations -------------------------------------


def _ops_for(fs):
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "s3" in protocols:
        return _S3Ops(fs)
    if "gs" in protocols or "gcs" in protocols:
        return _GCSOps(fs)
    return _GenericOps(fs)


class _S3Ops:
    """S3 through s3fs's client: `If-None-Match: *` / `If-Match: <etag>`."""

    #: Largest object sent as one PutObject (S3's limit is 5 GiB); larger
    #: ones are multipart uploads whose completion carries the condition.
    single_put_limit = 5 * 2**30
    part_size = 256 * 2**20

    def __init__(self, fs):
        self.fs = fs

    def _run(self, coro):
        from fsspec.asyn import sync

        return sync(self.fs.loop, lambda: coro)

    @staticmethod
    def _conflict(exc: BaseException) -> bool:
        if isinstance(exc, FileExistsError):
            return True
        cause = exc.__cause__ or exc
        response = getattr(cause, "response", None)
        code = (response.get("Error") or {}).get("Code", "") if isinstance(response, dict) else ""
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")

    def put(self, path: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> str:
        bucket, key, _ = self.fs.split_path(path)
        cond: dict[str, str] = {}
        if if_absent:
            cond["IfNoneMatch"] = "*"
        if if_match is not None:
            cond["IfMatch"] = if_match
        try:
            if len(data) <= self.single_put_limit:
                out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond)
            else:
                out = self._run(self._multipart(bucket, key, data, cond))
        except Exception as exc:
            if self._conflict(exc):
                raise _Conflict(str(exc)) from exc
            raise
        finally:
            self.fs.invalidate_cache(path)
        return out["ETag"]

    async def _multipart(self, bucket: str, key: str, data: bytes, cond: dict[str, str]) -> dict:
        call = self.fs._call_s3
        mpu = await call("create_multipart_upload", Bucket=bucket, Key=key)
        try:
            parts = []
            view = memoryview(data)
            for number, start in enumerate(range(0, len(data), self.part_size), 1):
                out = await call(
                    "upload_part", Bucket=bucket, Key=key, UploadId=mpu["UploadId"],
                    PartNumber=number, Body=bytes(view[start : start + self.part_size]),
                )
                parts.append({"PartNumber": number, "ETag": out["ETag"]})
            return await call(
                "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=mpu["UploadId"],
                MultipartUpload={"Parts": parts}, **cond,
            )
        except BaseException:
            try:
                await call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=mpu["UploadId"])
            except Exception:  # noqa: BLE001
                pass
            raise

    def get(self, path: str) -> tuple[bytes, str]:
        bucket, key, _ = self.fs.split_path(path)

        async def get():
            out = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            body = out["Body"]
            try:
                return await body.read(), out["ETag"]
            finally:
                body.close()

        return self._run(get())

    def delete(self, path: str, *, if_match: str | None = None) -> None:
        bucket, key, _ = self.fs.split_path(path)
        try:
            if if_match is None:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key)
            else:
                try:
                    self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=if_match)
                except Exception as exc:
                    if self._conflict(exc):
                        raise _Conflict(str(exc)) from exc
                    # A server without conditional deletes: we hold the lease.
                    self.fs.call_s3("delete_object", Bucket=bucket, Key=key)
        finally:
            self.fs.invalidate_cache(path)

    def abort_uploads(self, prefix: str) -> int:
        bucket, key, _ = self.fs.split_path(prefix)
        out = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
        uploads = out.get("Uploads", [])[:1000]
        for upload in uploads:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        return len(uploads)


class _GCSOps:
    """GCS through gcsfs's session: multipart uploads with
    `ifGenerationMatch` (0 = only if absent), which GCS and fake-gcs-server
    both enforce."""

    def __init__(self, fs):
        self.fs = fs

    def put(self, path: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> str:
        import aiohttp
        from gcsfs.core import quote

        bucket, key, _ = self.fs.split_path(path)
        # Streamed from `data` as it is: no second copy of the checkpoint.
        body = aiohttp.MultipartWriter("related", boundary=f"=={uuid.uuid4().hex}==")
        body.append_json({"name": key})
        body.append(data, {"Content-Type": "application/octet-stream"})
        cond = {}
        if if_absent:
            cond["ifGenerationMatch"] = "0"
        elif if_match is not None:
            cond["ifGenerationMatch"] = str(if_match)
        try:
            out = self.fs.call(
                "POST",
                f"{self.fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                uploadType="multipart",
                headers={"Content-Type": body.headers["Content-Type"]},
                data=body,
                json_out=True,
                **cond,
            )
        except FileExistsError as exc:  # gcsfs's translation of 412
            raise _Conflict(str(exc)) from exc
        finally:
            self.fs.invalidate_cache(path)
        return str(out["generation"])

    def get(self, path: str) -> tuple[bytes, str]:
        bucket, key, _ = self.fs.split_path(path)
        headers, data = self.fs.call("GET", "b/{}/o/{}", bucket, key, alt="media")
        generation = headers.get("x-goog-generation")
        if generation is None:  # read the version first, then the bytes of that version
            info = self.fs.call("GET", "b/{}/o/{}", bucket, key, json_out=True)
            generation = str(info["generation"])
            _, data = self.fs.call("GET", "b/{}/o/{}", bucket, key, alt="media", generation=generation)
        return data, str(generation)

    def delete(self, path: str, *, if_match: str | None = None) -> None:
        bucket, key, _ = self.fs.split_path(path)
        cond = {} if if_match is None else {"ifGenerationMatch": str(if_match)}
        try:
            self.fs.call("DELETE", "b/{}/o/{}", bucket, key, **cond)
        except FileExistsError as exc:
            raise _Conflict(str(exc)) from exc
        finally:
            self.fs.invalidate_cache(path)

    def abort_uploads(self, prefix: str) -> int:
        return 0  # an unfinished upload is never visible; GCS drops it after a week


class _GenericOps:
    """Any other fsspec file system: fsspec's `pipe_file(mode="create")`
    (atomic only where the back end makes it so); the version is the bytes'
    hash, compared before a write (not atomic)."""

    def __init__(self, fs):
        self.fs = fs

    def put(self, path: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> str:
        import hashlib

        if if_match is not None:
            try:
                current, tag = self.get(path)
            except FileNotFoundError:
                raise _Conflict(path) from None
            if tag != if_match:
                raise _Conflict(path)
        try:
            self.fs.pipe_file(path, data, mode="create" if if_absent else "overwrite")
        except FileExistsError as exc:
            raise _Conflict(str(exc)) from exc
        finally:
            self.fs.invalidate_cache(path)
        return hashlib.sha256(data).hexdigest()

    def get(self, path: str) -> tuple[bytes, str]:
        import hashlib

        self.fs.invalidate_cache(path)
        data = self.fs.cat_file(path)
        return data, hashlib.sha256(data).hexdigest()

    def delete(self, path: str, *, if_match: str | None = None) -> None:
        if if_match is not None:
            try:
                if self.get(path)[1] != if_match:
                    raise _Conflict(path)
            except FileNotFoundError:
                return
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(path)

    def abort_uploads(self, prefix: str) -> int:
        return 0
