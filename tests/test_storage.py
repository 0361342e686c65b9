"""editflow.storage: one filesystem layer over local disk and a real (moto) S3 server."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editflow import storage
from editflow.storage import StorageError
from tests.s3_server import moto_endpoint, s3_bucket  # noqa: F401  (fixtures)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A folder location on each backend."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


def test_write_read_list_move_delete_on_each_backend(root):
    storage.makedirs(root)
    target = storage.join(root, "a.bin")
    assert not storage.exists(target)
    storage.write_bytes(target, b"one")
    storage.write_bytes(target, b"two")  # the same name again replaces, never a second copy
    assert storage.read_bytes(target) == b"two" and storage.is_file(target)
    assert storage.read_bytes(target, max_bytes=1) == b"tw"  # cap + 1 bytes: the caller sees "too big"
    storage.write_bytes(storage.join(root, "b.parquet"), b"x")
    assert storage.list_files(root) == [storage.join(root, "a.bin"), storage.join(root, "b.parquet")]
    storage.write_bytes(storage.join(root, "img#1 x.png"), b"k")  # "#" and spaces are part of a name
    assert storage.read_bytes(storage.join(root, "img#1 x.png")) == b"k"
    storage.delete(storage.join(root, "img#1 x.png"))
    assert storage.list_files(root, ".parquet") == [storage.join(root, "b.parquet")]
    assert storage.list_files(storage.join(root, "nothing-here")) == []
    storage.move(target, storage.join(root, "c.bin"))
    assert not storage.exists(target) and storage.read_bytes(storage.join(root, "c.bin")) == b"two"
    storage.delete(storage.join(root, "c.bin"))
    storage.delete(storage.join(root, "c.bin"))  # missing is fine
    assert storage.list_files(root) == [storage.join(root, "b.parquet")]
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(storage.join(root, "missing.bin"))


def test_parquet_through_the_resolved_filesystem(root):
    storage.makedirs(root)
    filesystem, path = storage.resolve(storage.join(root, "t.parquet"))
    pq.write_table(pa.table({"id": ["a", "b"]}), path, filesystem=filesystem)
    assert pq.read_table(path, filesystem=filesystem).column("id").to_pylist() == ["a", "b"]
    with storage.open_input_file(storage.join(root, "t.parquet")) as f:
        assert pq.ParquetFile(f).metadata.num_rows == 2


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path, monkeypatch):
    dst = tmp_path / "out.png"
    dst.write_bytes(b"old")

    def boom(src, dst_):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        storage.write_bytes(dst, b"new")
    assert os.listdir(tmp_path) == ["out.png"] and dst.read_bytes() == b"old"


def test_names_and_parents():
    assert storage.join("s3://b/x/", "results", "p.parquet") == "s3://b/x/results/p.parquet"
    assert storage.parent("s3://b/dir/m.parquet") == "s3://b/dir"
    assert storage.parent("/tmp/x/m.csv") == "/tmp/x"
    assert storage.scheme("/a/b") == "file" and storage.scheme("S3://b/k") == "s3"
    assert storage.scheme("file:///a") == "file" and storage.local_path("file:///a/b%20c") == "/a/b c"
    assert storage.absolute("s3://b/k") == "s3://b/k" and os.path.isabs(storage.absolute("rel"))


def test_relative_paths_under_a_uri_stay_in_the_bucket():
    assert storage.relative_to("s3://b/m", "img/a.png") == "s3://b/m/img/a.png"
    assert storage.relative_to("s3://b/m/sub", "../a.png") == "s3://b/m/a.png"
    with pytest.raises(StorageError, match="climbs above"):
        storage.relative_to("s3://b/m", "../../other-bucket/a.png")
    with pytest.raises(StorageError, match="absolute"):
        storage.relative_to("s3://b/m", "/etc/passwd")
    assert storage.relative_to("/data/m", "a.png") == "/data/m/a.png"


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "", "a\x00b", "\\\\host\\x", "C:\\x", "./"])
def test_child_never_leaves_the_root(tmp_path, name):
    for root in (str(tmp_path), "s3://bucket/out"):
        with pytest.raises(StorageError):
            storage.child(root, name)


def test_child_refuses_a_symlink_out_of_a_local_root(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(StorageError, match="outside"):
        storage.child(tmp_path / "out", "link/x.png")
    assert storage.child("s3://bucket/out", "images/a.png") == "s3://bucket/out/images/a.png"


def test_s3_endpoint_comes_from_the_standard_variable(s3_bucket, moto_endpoint, monkeypatch):
    storage.write_bytes(s3_bucket + "/k", b"v")
    # the same bucket name on another endpoint is another store: the cached filesystem must not leak
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(StorageError):
        storage.read_bytes(s3_bucket + "/k")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    assert storage.read_bytes(s3_bucket + "/k") == b"v"


def test_unknown_scheme_is_a_storage_error():
    with pytest.raises(StorageError):
        storage.read_bytes("nosuchscheme://x/y")


def test_fsspec_backends_resolve_too():
    storage.write_bytes("memory://editflow-test/a.txt", b"hi")
    assert storage.read_bytes("memory://editflow-test/a.txt") == b"hi"
    assert storage.list_files("memory://editflow-test") == ["memory://editflow-test/a.txt"]


def test_media_reads_s3_under_the_policy(s3_bucket):
    from editflow.media import MediaError, MediaPolicy, read_bytes

    storage.write_bytes(s3_bucket + "/in/a.bin", b"x" * 100)
    allowed = MediaPolicy(allowed_schemes={"file", "s3"}, max_bytes=100)
    assert read_bytes(s3_bucket + "/in/a.bin", allowed) == b"x" * 100
    with pytest.raises(MediaError, match="image not found"):
        read_bytes(s3_bucket + "/in/nope.png", allowed)
    with pytest.raises(MediaError, match="file too large"):
        read_bytes(s3_bucket + "/in/a.bin", MediaPolicy(allowed_schemes={"s3"}, max_bytes=99))
    with pytest.raises(MediaError, match="scheme 's3' is not allowed"):
        read_bytes(s3_bucket + "/in/a.bin", MediaPolicy())
