"""`storage.bucket.BucketStore` against real servers on 127.0.0.1: moto (S3)
and fake-gcs-server (GCS), each test on both (`bucket` fixture, tests/support/servers.py).

What is fenced by which server, as these tests exercise it:

- conditional create (checkpoint commits, lease creation): S3 `If-None-Match`,
  GCS multipart upload with `ifGenerationMatch=0`; both servers enforce it;
- conditional overwrite (lease renewal and takeover): S3 `If-Match`, GCS
  multipart upload with `ifGenerationMatch=<generation>`; both enforce it, so
  the two-takers test and the lost-lease test go through the server's check.
- fake-gcs-server does not enforce preconditions on DELETE (nor on
  `uploadType=media` uploads, which BucketStore never uses), so no test here
  relies on a conditional delete.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
import time
import warnings

import fsspec
import pytest

from resumable_scheduler import harness
from resumable_scheduler.storage import bucket as bucket_mod
from resumable_scheduler.storage.bucket import LEASE_NAME, BucketStore
from resumable_scheduler.storage.store import Store, store_for

LEASE = 2.0  # seconds: a short lease so that expiry tests stay short
NAME = "ckpt-00000001-0a0b0c0d.weights.h5"
NAME2 = "ckpt-00000002-01020304.weights.h5"
BUCKET_PY = bucket_mod.__file__


def make(url: str, **kwargs) -> BucketStore:
    kwargs.setdefault("lease_seconds", LEASE)
    return BucketStore(url, **kwargs)


def lease_doc(url: str) -> dict | None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    try:
        return json.loads(fs.cat_file(f"{path}/{LEASE_NAME}"))
    except FileNotFoundError:
        return None


def plant_lease(url: str, *, expires_in: float, host: str = "elsewhere", pid: int = 4242) -> None:
    """A lease written by a process on another machine."""
    now = time.time()
    doc = {"owner": "f" * 32, "host": host, "machine": "another-machine", "pid": pid,
           "written": now, "expires": now + expires_in, "lease_seconds": LEASE}
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{path}/{LEASE_NAME}", json.dumps(doc).encode())
    fs.invalidate_cache()


def test_store_for_picks_bucket_store(bucket_url):
    store = store_for(bucket_url)
    assert isinstance(store, BucketStore) and isinstance(store, Store)
    assert store.location == bucket_url


def test_round_trip(bucket, bucket_url):
    store = make(bucket_url)
    store.open()
    try:
        assert store.names() == []
        store.commit(NAME, b"first")
        store.commit(NAME2, bytes(range(256)) * 1000)
        assert sorted(store.names()) == [NAME, NAME2]  # the lease is not listed
        assert store.read(NAME) == b"first"
        assert store.read(NAME2) == bytes(range(256)) * 1000
        assert store.exists(NAME) and not store.exists("ckpt-00000003-00000000.weights.h5")
        assert store.describe(NAME) == f"{bucket.scheme}://{bucket.name}/run/{NAME}"
        # A fresh store (another process, say) sees the committed objects.
        assert sorted(make(bucket_url).names()) == [NAME, NAME2]
        store.delete(NAME)
        store.delete(NAME)  # gone already: no error
        assert store.names() == [NAME2]
        with pytest.raises(FileNotFoundError):
            store.read(NAME)
        store.remove_all()
        assert store.names() == [] and lease_doc(bucket_url) is None
    finally:
        store.close()


def test_commit_never_overwrites(bucket_url):
    store = make(bucket_url)
    store.open()
    try:
        store.commit(NAME, b"original")
        with pytest.raises(FileExistsError, match="never overwritten"):
            store.commit(NAME, b"other bytes")
        assert store.read(NAME) == b"original"
        assert store.names() == [NAME]
    finally:
        store.close()


def test_second_writer_refused_first_goes_on(bucket_url):
    first = make(bucket_url)
    first.open()
    try:
        second = make(bucket_url)
        with pytest.raises(RuntimeError) as info:
            second.open()
        message = str(info.value)
        assert message.startswith(f"Another process is training with backup_dir={bucket_url!r}: ")
        assert f"pid {os.getpid()} holds the lease {first.lease_url}" in message
        # The first keeps renewing past the lease's length and keeps committing.
        time.sleep(LEASE * 1.5)
        first.commit(NAME, b"still mine")
        assert lease_doc(bucket_url)["owner"] == first._token
        with pytest.raises(RuntimeError, match="Another process is training"):
            make(bucket_url).open()
        # Writing without the lease is refused too.
        with pytest.raises(RuntimeError, match="not open"):
            second.commit(NAME2, b"x")
    finally:
        first.close()
    assert make(bucket_url).names() == [NAME]


def test_close_removes_lease(bucket_url):
    store = make(bucket_url, lease_seconds=120)
    store.open()
    assert lease_doc(bucket_url)["owner"] == store._token
    store.close()
    store.close()  # idempotent
    assert lease_doc(bucket_url) is None
    again = make(bucket_url, lease_seconds=120)
    again.open()  # at once: no wait for an expiry
    again.close()


def test_expired_lease_taken_over_after_the_bound(bucket_url):
    plant_lease(bucket_url, expires_in=LEASE)  # a holder elsewhere that just renewed, then died
    with pytest.raises(RuntimeError, match="host 'elsewhere' pid 4242 holds the lease"):
        make(bucket_url).open()
    time.sleep(LEASE + 0.2)
    store = make(bucket_url)
    with pytest.warns(UserWarning, match="Took over the lease .* from host 'elsewhere' pid 4242: it expired"):
        store.open()
    try:
        assert lease_doc(bucket_url)["owner"] == store._token
        store.commit(NAME, b"taken over")
    finally:
        store.close()


def test_lease_wait_waits_for_expiry(bucket_url):
    plant_lease(bucket_url, expires_in=1.0)
    store = make(bucket_url, lease_wait=LEASE + 2)
    start = time.monotonic()
    with pytest.warns(UserWarning, match="it expired"):
        store.open()
    assert 0.5 < time.monotonic() - start < LEASE + 2
    store.close()


def test_two_takers_of_an_expired_lease_one_wins(bucket_url):
    """Both read the same expired lease version before either writes, then
    both overwrite it conditionally: the server lets exactly one through."""
    plant_lease(bucket_url, expires_in=-60)
    takers = [make(bucket_url), make(bucket_url)]
    barrier = threading.Barrier(2, timeout=20)
    for store in takers:
        get, first = store._ops.get, [True]

        def synced_get(path, get=get, first=first):
            out = get(path)
            if first[0]:
                first[0] = False
                barrier.wait()  # both hold the same version now
            return out

        store._ops.get = synced_get
    outcomes: list[object] = [None, None]

    def take(i):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                takers[i].open()
            outcomes[i] = "won"
        except Exception as exc:  # noqa: BLE001
            outcomes[i] = exc

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert outcomes.count("won") == 1, outcomes
        loser = outcomes[1 - outcomes.index("won")]
        assert isinstance(loser, RuntimeError) and "Another process is training" in str(loser)
        winner = takers[outcomes.index("won")]
        assert lease_doc(bucket_url)["owner"] == winner._token
    finally:
        for store in takers:
            store.close()


def test_lost_lease_fences_the_old_holder(bucket_url):
    """A holder that stopped renewing (a long pause) and lost its lease cannot
    commit: its renewal, conditional on the version it wrote, fails on the
    server; its close() leaves the new holder's lease alone."""
    old = make(bucket_url)
    old.open()
    old._stop.set()  # the pause: no more renewals
    old._thread.join(timeout=10)
    time.sleep(LEASE + 0.2)
    new = make(bucket_url)
    with pytest.warns(UserWarning, match="it expired"):
        new.open()
    try:
        with pytest.raises(RuntimeError, match="Lost the lease"):
            old.commit(NAME, b"stale")
        with pytest.raises(RuntimeError, match="Lost the lease"):
            old.delete(NAME)
        assert not new.exists(NAME)
        old.close()
        assert lease_doc(bucket_url)["owner"] == new._token
        new.commit(NAME, b"fresh")
        assert new.read(NAME) == b"fresh"
    finally:
        new.close()


CHILD = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("rs_bucket", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
if sys.argv[3] == "elsewhere":
    mod._machine_id = lambda: "another-machine"
store = mod.BucketStore(sys.argv[2], lease_seconds=float(sys.argv[4]))
store.open()
print("holding", flush=True)
time.sleep(60)
"""


def start_holder(url: str, where: str) -> harness.Child:
    """A child process (just the bucket module, no Keras) that has taken the lease."""
    child = harness.Child([sys.executable, "-c", CHILD, BUCKET_PY, url, where, str(LEASE)])
    try:
        child.wait_for_line(lambda line: line == "holding", timeout=60)
    except BaseException:
        child.close()
        raise
    return child


def test_killed_holder_elsewhere_expires_within_the_bound(bucket_url):
    with start_holder(bucket_url, "elsewhere") as child:
        with pytest.raises(RuntimeError, match=f"pid {child.pid} holds the lease"):
            make(bucket_url).open()
        child.stop(signal.SIGKILL)
    killed = time.monotonic()
    store = make(bucket_url, lease_wait=LEASE + 5)
    with pytest.warns(UserWarning, match=f"from host .* pid {child.pid}: it expired"):
        store.open()
    try:
        assert time.monotonic() - killed <= LEASE + 1.5  # the stated bound, plus polling
        assert lease_doc(bucket_url)["owner"] == store._token
    finally:
        store.close()


def test_killed_holder_on_this_machine_taken_over_at_once(bucket_url):
    """Same boot, same PID namespace: a lease whose process is gone (here a
    zombie, killed and not yet reaped) is taken over without waiting."""
    with start_holder(bucket_url, "here") as child:
        child.send_signal(signal.SIGKILL)  # and no wait: it stays a zombie
        deadline = time.monotonic() + 10
        while bucket_mod._stat(child.pid)[:1] != ["Z"] and time.monotonic() < deadline:
            time.sleep(0.02)
        store = make(bucket_url, lease_seconds=120)  # no waiting for an expiry
        with pytest.warns(UserWarning, match=f"its process \\(pid {child.pid}\\) on this machine is gone"):
            store.open()
        store.close()


def test_forked_child_neither_writes_nor_releases(bucket_url):
    store = make(bucket_url)
    store.open()
    try:
        pid = os.fork()
        if pid == 0:  # the child: a write is refused, close() leaves the lease
            code = 1
            try:
                store.commit(NAME, b"from a fork")
            except RuntimeError:
                store.close()
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        assert os.waitstatus_to_exitcode(done[1]) == 0
        assert lease_doc(bucket_url)["owner"] == store._token
        assert store.names() == []
    finally:
        store.close()


def test_a_server_ignoring_preconditions_is_reported(bucket_url):
    store = make(bucket_url)
    put = store._ops.put
    store._ops.put = lambda path, data, **cond: put(path, data)  # what such a server does
    with pytest.warns(UserWarning, match="the server ignored a create-only write"):
        store.open()
    store.close()


WRITER = """
import importlib.util, os, sys, zlib
spec = importlib.util.spec_from_file_location("rs_bucket", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
store = mod.BucketStore(sys.argv[2], lease_seconds=120)
store.open()  # takes over the killed writer's lease at once (same machine)
start = int(sys.argv[3])
for i in range(start, start + 50):
    data = os.urandom(8 * 2**20)
    name = f"ckpt-{i:08d}-{zlib.crc32(data):08x}.weights.h5"
    print("put", name, flush=True)
    store.commit(name, data)
    print("committed", name, flush=True)
"""


def test_sigkill_during_commits_leaves_only_whole_objects(bucket_url):
    """A writer SIGKILLed at random instants, most of them inside an upload:
    every object the store lists is whole (its CRC-32 is in its name), and
    every commit that returned is there."""
    import random
    import zlib

    rng = random.Random(9)
    committed, inside = [], 0
    for attempt in range(4):
        with harness.Child([sys.executable, "-c", WRITER, BUCKET_PY, bucket_url, str(attempt * 100)]) as child:
            for _ in range(rng.randint(1, 3)):
                child.wait_for_line(lambda line: line.startswith("put"), timeout=120)
            read = len(child.output)  # the lines read before the kill (the last one a put)
            time.sleep(rng.uniform(0.0, 0.05))
            child.stop(signal.SIGKILL)
            harness.drain(child)
        committed += [x.split()[1] for x in child.output if x.startswith("committed")]
        rest = child.output[read:]
        inside += not any(x.startswith("committed") for x in rest)
    reader = make(bucket_url)
    names = reader.names()
    assert set(committed) <= set(names)
    for name in names:
        assert zlib.crc32(reader.read(name)) == int(name.split("-")[2].split(".")[0], 16), name
    assert inside >= 1  # at least one kill landed between the start and the end of a commit


def test_missing_bucket(bucket):
    store = make(f"{bucket.scheme}://no-such-bucket-{bucket.name}/run")
    with pytest.raises(FileNotFoundError, match="the bucket does not exist"):
        store.open()


def test_s3_multipart_commit_is_create_only(bucket, monkeypatch):
    """Objects above the single-put limit go up in parts; the completion is
    conditional, and a leftover upload is aborted at open()."""
    if bucket.scheme != "s3":
        pytest.skip("S3 multipart uploads")
    monkeypatch.setattr(bucket_mod._S3Ops, "single_put_limit", 2**20)
    monkeypatch.setattr(bucket_mod._S3Ops, "part_size", 5 * 2**20)
    fs, path = fsspec.core.url_to_fs(bucket.url)
    bucket_name, key, _ = fs.split_path(f"{path}/{NAME2}")
    fs.call_s3("create_multipart_upload", Bucket=bucket_name, Key=key)  # a killed commit's leftover
    store = make(bucket.url)
    with pytest.warns(UserWarning, match="Aborted 1 interrupted upload"):
        store.open()
    try:
        data = os.urandom(6 * 2**20)
        store.commit(NAME, data)
        assert store.read(NAME) == data
        with pytest.raises(FileExistsError):
            store.commit(NAME, data[::-1])
        assert store.read(NAME) == data
    finally:
        store.close()


def test_missing_client_package_says_what_to_install(monkeypatch):
    def no_s3fs(protocol):
        raise ImportError(f"Install s3fs to access {protocol}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", no_s3fs)
    with pytest.raises(ImportError, match=r'pip install "resumable-scheduler\[s3\]"'):
        BucketStore("s3://bucket/run")
    with pytest.raises(ImportError, match=r'pip install "resumable-scheduler\[gcs\]"'):
        BucketStore("gs://bucket/run")


def test_invalid_arguments():
    with pytest.raises(ValueError, match="lease_seconds=0"):
        BucketStore("memory://rs-args/run", lease_seconds=0)
    with pytest.raises(ValueError, match="lease_wait=-1"):
        BucketStore("memory://rs-args/run", lease_wait=-1)
    store = BucketStore("memory://rs-args/run")
    with pytest.raises(ValueError, match="Invalid object name"):
        store.describe("../x")
    assert importlib.util.find_spec("fsspec") is not None
