"""Storage on local disk and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import time

import pytest

from bluref_ray import storage
from bluref_ray.storage import StorageConfig, StorageError, StorageNotFoundError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A writable root on local disk, or a fresh bucket on the S3 server."""
    if request.param == "local":
        return str(tmp_path), None
    cfg = request.getfixturevalue("s3_cfg")
    return request.getfixturevalue("s3_bucket"), cfg


def test_write_read_list_glob(root):
    base, cfg = root
    storage.write_bytes(storage.join(base, "a", "x.bin"), b"abc", cfg)
    storage.write_text(storage.join(base, "a", "b", "y.txt"), "hello", cfg)
    storage.write_bytes(storage.join(base, "z.mp4"), b"v", cfg)
    assert storage.read_bytes(storage.join(base, "a", "x.bin"), cfg) == b"abc"
    assert storage.read_text(storage.join(base, "a/b/y.txt"), cfg) == "hello"
    files = storage.list_files(base, cfg)
    assert [storage.relative(f, base) for f in files] == ["a/b/y.txt", "a/x.bin", "z.mp4"]
    assert [storage.relative(f, base) for f in storage.glob(base + "/**/*.txt", cfg)] == [
        "a/b/y.txt"]
    assert [storage.relative(f, base) for f in storage.glob(base + "/*.mp4", cfg)] == ["z.mp4"]
    assert [storage.relative(f, base) for f in storage.glob(base + "/a/*.b?n", cfg)] == [
        "a/x.bin"]
    assert storage.exists(storage.join(base, "a", "x.bin"), cfg)
    assert not storage.exists(storage.join(base, "nope"), cfg)
    with storage.open_input(storage.join(base, "a", "x.bin"), cfg) as f:
        f.seek(1)
        assert f.read() == b"bc"
    storage.delete(storage.join(base, "a"), cfg)
    assert [storage.relative(f, base) for f in storage.list_files(base, cfg)] == ["z.mp4"]


def test_failed_write_leaves_nothing_and_keeps_old_content(root):
    base, cfg = root
    uri = storage.join(base, "table.parquet")
    storage.write_bytes(uri, b"old", cfg)
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_atomic(uri, cfg) as f:
            f.write(b"half-writ")
            raise RuntimeError("boom")
    assert storage.read_bytes(uri, cfg) == b"old"
    with pytest.raises(RuntimeError):
        with storage.open_atomic(storage.join(base, "new.bin"), cfg) as f:
            f.write(b"x")
            raise RuntimeError("boom")
    assert not storage.exists(storage.join(base, "new.bin"), cfg)
    # no temporary files are left behind either (hidden ones included)
    assert _all_names(base, cfg) == ["table.parquet"]


def _all_names(base: str, cfg) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(base, cfg)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)))


def test_upload_file_streams_in_parts(root, tmp_path):
    """A file larger than one S3 upload part (10 MB) arrives whole, under its name only."""
    import numpy as np

    base, cfg = root
    local = tmp_path / "clip.mp4"
    data = np.random.default_rng(0).integers(0, 256, 23 << 20, dtype=np.uint8).tobytes()
    local.write_bytes(data)
    uri = storage.join(base, "out", "clip.mp4")
    storage.upload_file(str(local), uri, cfg)
    assert storage.read_bytes(uri, cfg) == data
    assert _all_names(storage.join(base, "out"), cfg) == ["clip.mp4"]


def test_missing_file_is_a_clear_not_found(root):
    base, cfg = root
    with pytest.raises(StorageNotFoundError, match="missing.bin"):
        storage.read_bytes(storage.join(base, "missing.bin"), cfg)
    with pytest.raises(StorageNotFoundError):
        storage.list_files(storage.join(base, "no-such-dir"), cfg)


def test_uri_forms(tmp_path):
    assert storage.normalize("s3://b//k/x") == "s3://b/k/x"
    assert storage.normalize(f"file://{tmp_path}/a") == f"{tmp_path}/a"
    assert storage.join("s3://b/k", "x", "y.png") == "s3://b/k/x/y.png"
    assert storage.relative("s3://b/k/x/y.png", "s3://b/k") == "x/y.png"
    assert storage.parent("s3://b/k/x") == "s3://b/k"
    with pytest.raises(StorageError, match="unsupported scheme"):
        storage.normalize("gs://bucket/x")
    with pytest.raises(StorageError, match="bucket"):
        storage.normalize("s3://")


def test_s3_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    r = StorageConfig().resolved()
    assert (r.endpoint_url, r.access_key, r.secret_key, r.region) == (
        "http://10.0.0.1:9000", "k", "s", "us-east-1")
    # the config wins over the environment
    assert StorageConfig(endpoint_url="http://h:1").resolved().endpoint_url == "http://h:1"


@pytest.mark.faults
def test_unreachable_s3_endpoint_gives_a_clear_error():
    from s3server import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = StorageConfig(endpoint_url=endpoint, access_key="k", secret_key="s",
                        connect_timeout_s=1, max_attempts=1, outage_s=2)
    t0 = time.time()
    with pytest.raises(StorageError) as e:
        storage.check_reachable("s3://fleet/videos", cfg)
    assert "cannot reach the S3 endpoint" in str(e.value)
    assert endpoint in str(e.value) and "s3://fleet" in str(e.value)
    assert time.time() - t0 < 60
    t0 = time.time()  # later operations retry for storage.outage_s, then say so
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint.*Still unreachable "
                                           r"after \d s of retries \(storage.outage_s\)"):
        storage.list_files("s3://fleet/videos", cfg)
    assert 1.5 <= time.time() - t0 < 10


@pytest.mark.faults
def test_wrong_s3_keys_are_refused(s3_server, s3_bucket, s3_cfg):
    storage.write_bytes(storage.join(s3_bucket, "x"), b"1", s3_cfg)
    bad = StorageConfig(endpoint_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                        secret_key="wrong", region="us-east-1", max_attempts=1)
    with pytest.raises(StorageError, match=s3_bucket):
        storage.read_bytes(storage.join(s3_bucket, "x"), bad)


@pytest.mark.parametrize("message, outage", [
    ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Couldn't connect "
     "to server", True),
    ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 56, Failure when "
     "receiving data from the peer; Details: Recv failure: Connection reset by peer", True),
    ("AWS Error SERVICE_UNAVAILABLE during GetObject operation: please try again", True),
    ("AWS Error ACCESS_DENIED during PutObject operation: Access Denied", False),
    ("Parquet magic bytes not found in footer", False),
])
def test_outages_are_told_from_other_errors(message, outage):
    """Refused, timed out, reset mid-request (a server going down) or failing for now: an
    outage (retried); anything else: an error about the file."""
    err = OSError(message)
    if outage:
        with pytest.raises(storage.StorageUnreachableError, match="s3://b/k"):
            storage.raise_if_unreachable(err, "read", "s3://b/k", None)
    else:
        storage.raise_if_unreachable(err, "read", "s3://b/k", None)  # returns


def test_outage_retries_count_from_the_first_failure_and_give_up_once():
    """A long piece of work that meets an outage near its end still gets the whole window; a
    retry inside a retry does not wait again; the window's end is one error that says so."""
    import time

    cfg = StorageConfig(outage_s=1.0)
    calls = []

    def slow_then_down_once():
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(1.2)  # longer than outage_s, before the outage
            raise storage.StorageUnreachableError("s3://b/k: down")
        return "done"

    assert storage.retry_while_unreachable(slow_then_down_once, cfg) == "done"
    assert len(calls) == 2

    # two blips far apart (a retry that worked for a long while in between) are two outages
    calls.clear()

    def blip_work_blip():
        calls.append(time.monotonic())
        if len(calls) == 2:
            time.sleep(1.5)  # works for longer than the window, then meets a second blip
        if len(calls) <= 2:
            raise storage.StorageUnreachableError("s3://b/k: down")
        return "done"

    old, storage.PROGRESS_S = storage.PROGRESS_S, 1.0
    try:
        assert storage.retry_while_unreachable(blip_work_blip, cfg) == "done"
    finally:
        storage.PROGRESS_S = old
    assert len(calls) == 3

    def always_down():
        raise storage.StorageUnreachableError("s3://b/k: down")

    t0 = time.monotonic()
    with pytest.raises(storage.StorageUnreachableError, match=r"storage\.outage_s") as e:
        storage.retry_while_unreachable(always_down, cfg)
    assert time.monotonic() - t0 < 3

    def given_up_within():
        raise e.value

    t0 = time.monotonic()
    with pytest.raises(storage.StorageUnreachableError):
        storage.retry_while_unreachable(given_up_within, cfg)
    assert time.monotonic() - t0 < 0.1  # not waited for twice


def test_only_temporaries_of_atomic_writes_are_deleted(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in (".a.parquet.0123abcd.tmp", "sub/.b.png.89abcdef.tmp"):
        (tmp_path / name).write_bytes(b"x")
    for name in (".users-own.tmp", "notes.tmp", ".a.parquet.XYZ.tmp"):
        (tmp_path / name).write_bytes(b"keep")
    assert storage.delete_temporaries(str(tmp_path), recursive=False) == 1
    assert storage.delete_temporaries(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        ".a.parquet.XYZ.tmp", ".users-own.tmp", "notes.tmp"]


def test_glob_at_the_root_and_a_wildcard_bucket(tmp_path):
    """``/x*`` looks at the root's own files (it listed the working folder), and a bucket
    cannot be a wildcard."""
    assert storage.glob("/no-such-file-of-bluref-*") == []
    os_root_files = [f for f in storage.glob("/*") if "/" not in f[1:]]
    assert os_root_files == storage.glob("/*")  # the root's own files, nothing deeper
    with pytest.raises(storage.StorageError, match="bucket of a glob cannot hold a wildcard"):
        storage.glob("s3://buck*/x.mp4")
