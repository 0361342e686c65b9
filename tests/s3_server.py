"""A real S3 server for tests: moto's standalone server in a subprocess on 127.0.0.1, a free port.

`moto_endpoint` (session) starts and stops the server; `s3_bucket` points the standard AWS_*
variables at it for one test (Ray workers started afterwards inherit them) and makes a fresh bucket.
Import both fixtures into a test module: `from tests.s3_server import moto_endpoint, s3_bucket`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

ACCESS_KEY, SECRET_KEY, REGION = "testing", "testing", "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """http://127.0.0.1:PORT of a running moto S3 server (skips when moto is not installed)."""
    pytest.importorskip("moto.server", reason="moto[server] (dev extra) is needed for the S3 tests")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start on {endpoint}")
            time.sleep(0.2)
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch) -> str:
    """s3://<fresh bucket> on the moto server, with AWS_* set the standard way for this test."""
    import pyarrow.fs as pafs

    for name, value in (("AWS_ENDPOINT_URL", moto_endpoint), ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY), ("AWS_DEFAULT_REGION", REGION),
                        ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(name, value)
    bucket = f"editflow-{uuid.uuid4().hex[:12]}"
    admin = pafs.S3FileSystem(endpoint_override=moto_endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                              region=REGION, allow_bucket_creation=True)
    admin.create_dir(bucket)
    return f"s3://{bucket}"
