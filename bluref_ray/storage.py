"""One way to name data everywhere: local paths, ``file://`` and ``s3://bucket/key``.

Every stage of bluref-ray reads and writes through this module, so a pipeline that runs on a
laptop against ``./data`` runs unchanged on a cluster against ``s3://fleet/data``.

* :func:`resolve` turns a URI into a :mod:`pyarrow.fs` filesystem and a path on it; Ray Data
  takes that filesystem directly (``ray.data.read_parquet(path, filesystem=fs)``).
* S3 settings come from :class:`StorageConfig` or, for every field left unset, from the standard
  AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``).
* Writes are atomic: :func:`open_atomic` writes a local file under a temporary name and renames
  it; on S3 it streams a temporary object and moves it into place once the ``with`` block
  succeeded (:func:`write_bytes` puts small objects in one request). A reader never sees a
  half-written file, and a failed write leaves nothing behind.
* Failures surface as :class:`StorageError` naming the URI (and the endpoint, for S3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

import pyarrow.fs as pafs

#: The settings of :class:`StorageConfig` that are secrets: never recorded (command lines kept
#: in checkpoints and locks, a sweep's ``sweep.json``).
SECRETS = ("access_key", "secret_key")


class StorageError(OSError):
    """A storage operation failed; the message names the URI and the cause."""


class StorageUnreachableError(StorageError):
    """The S3 endpoint did not answer, or answered that it fails for now (after
    ``storage.outage_s`` of retries, where they apply); the message names it."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The URI names nothing."""


@dataclass(frozen=True)
class StorageConfig:
    """Where object storage lives. Unset fields fall back to the AWS environment variables."""

    endpoint_url: str | None = field(
        default=None,
        metadata={"help": "S3 endpoint, e.g. http://127.0.0.1:8333 (default: $AWS_ENDPOINT_URL, "
                          "else AWS itself)"})
    access_key: str | None = field(
        default=None, metadata={"help": "S3 access key (default: $AWS_ACCESS_KEY_ID)"})
    secret_key: str | None = field(
        default=None, metadata={"help": "S3 secret key (default: $AWS_SECRET_ACCESS_KEY)"})
    region: str | None = field(
        default=None,
        metadata={"help": "S3 region (default: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1)"})
    connect_timeout_s: float = field(
        default=5.0, metadata={"help": "seconds to wait for a connection to the S3 endpoint"})
    request_timeout_s: float = field(
        default=120.0, metadata={"help": "seconds to wait for one S3 request"})
    max_attempts: int = field(
        default=3, metadata={"help": "attempts per S3 request before giving up"})
    outage_s: float = field(
        default=60.0,
        metadata={"help": "seconds a read, write, listing or delete (or an S3 video's clip, "
                          "started again) keeps retrying from the first failure while the S3 "
                          "endpoint cannot be reached or answers 5xx (a restart, a network "
                          "outage) before the job stops (it resumes when started again)"})

    def resolved(self) -> StorageConfig:
        """This config with every unset field filled from the environment."""
        env = os.environ
        return dataclasses.replace(
            self,
            endpoint_url=self.endpoint_url or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL") or None,
            access_key=self.access_key or env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=self.secret_key or env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
            or "us-east-1",
        )


DEFAULT = StorageConfig()

_S3 = "s3://"


def is_s3(uri: str) -> bool:
    """Whether ``uri`` names an object in S3 (``s3://bucket/key``)."""
    return str(uri).startswith(_S3)


def normalize(uri: str | os.PathLike) -> str:
    """The canonical form of a URI: ``s3://bucket/key`` or an absolute local path."""
    uri = os.fspath(uri)
    if is_s3(uri):
        bucket_key = uri[len(_S3):].strip("/")
        if not bucket_key:
            raise StorageError(f"{uri!r}: an s3:// URI needs a bucket")
        return _S3 + re.sub("/+", "/", bucket_key)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        raise StorageError(f"{uri!r}: unsupported scheme (use a local path, file:// or s3://)")
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/``."""
    out = normalize(uri).rstrip("/")
    for part in parts:
        out = out + "/" + str(part).strip("/")
    return out


def relative(uri: str, root: str) -> str:
    """The part of ``uri`` below ``root`` (both normalized), with ``/`` separators."""
    uri, root = normalize(uri), normalize(root).rstrip("/")
    if uri == root:
        return ""
    if not uri.startswith(root + "/"):
        raise StorageError(f"{uri!r} is not below {root!r}")
    return uri[len(root) + 1:]


def basename(uri: str) -> str:
    return normalize(uri).rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    u = normalize(uri).rstrip("/")
    head = u.rsplit("/", 1)[0]
    return head if head and head + "/" != _S3 else u


def _split_endpoint(endpoint: str) -> tuple[str, str]:
    m = re.match(r"^(https?)://(.+?)/?$", endpoint)
    return (m.group(1), m.group(2)) if m else ("https", endpoint)


@functools.lru_cache(maxsize=16)
def _s3(cfg: StorageConfig, background_writes: bool = True) -> pafs.S3FileSystem:
    """An S3 filesystem; ``background_writes=False`` uploads each part as it is written, so a
    stream holds one part (10 MB) in memory instead of queueing parts faster than they go."""
    kwargs: dict = dict(
        background_writes=background_writes,
        region=cfg.region,
        connect_timeout=cfg.connect_timeout_s,
        request_timeout=cfg.request_timeout_s,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=cfg.max_attempts),
        allow_bucket_creation=True,
    )
    if cfg.access_key and cfg.secret_key:
        kwargs.update(access_key=cfg.access_key, secret_key=cfg.secret_key)
    if cfg.endpoint_url:
        scheme, host = _split_endpoint(cfg.endpoint_url)
        kwargs.update(endpoint_override=host, scheme=scheme)
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, cfg: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path on it.

    Returns:
        ``(filesystem, path)``; for S3 the path is ``bucket/key``, locally an absolute path.
    """
    uri = normalize(uri)
    if is_s3(uri):
        return _s3((cfg or DEFAULT).resolved()), uri[len(_S3):]
    return pafs.LocalFileSystem(), uri


def filesystem(uri: str, cfg: StorageConfig | None = None) -> pafs.FileSystem:
    """The pyarrow filesystem that serves ``uri`` (what Ray Data's ``filesystem=`` takes)."""
    return resolve(uri, cfg)[0]


def _endpoint_name(cfg: StorageConfig | None) -> str:
    return (cfg or DEFAULT).resolved().endpoint_url or "the default AWS endpoint"


_UNREACHABLE = re.compile(
    r"curlCode: (6|7|28)|Couldn't connect|Could not resolve|Connection refused|timed out|"
    r"Failed to connect|Unable to connect|Network is unreachable", re.I)


#: Errors of a server that is up but failing for now (restarting, overloaded), or of a
#: connection that broke mid-request (a server going down): retried as outages.
_TRANSIENT = re.compile(
    r"INTERNAL_FAILURE|SERVICE_UNAVAILABLE|SLOW_DOWN|SlowDown|ServiceUnavailable|InternalError|"
    r"please try again|Throttl|HTTP (response code|status):? 50[0234]|"
    r"curlCode: (52|55|56)|Connection reset|Broken pipe|Empty reply from server", re.I)


@contextlib.contextmanager
def errors(op: str, uri: str, cfg: StorageConfig | None) -> Iterator[None]:
    """Turn pyarrow/OS errors into StorageErrors that name the URI and, for S3, the endpoint."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as e:
        raise StorageNotFoundError(f"{op} {uri}: not found") from e
    except OSError as e:
        raise_if_unreachable(e, op, uri, cfg)
        msg = str(e)
        if is_s3(uri) and re.search(r"ACCESS_DENIED|AccessDenied", msg):
            raise StorageError(
                f"{op} {uri}: access denied: the S3 keys in use ({_endpoint_name(cfg)}) may not "
                f"{op} there; check the keys and the bucket's policy ({msg.strip()})") from e
        if is_s3(uri) and ("NoSuchBucket" in msg or "does not exist" in msg.lower()):
            raise StorageNotFoundError(f"{op} {uri}: not found ({msg.strip()})") from e
        raise StorageError(f"{op} {uri}: {msg.strip()}") from e


def raise_if_unreachable(e: BaseException, op: str, uri: str,
                         cfg: StorageConfig | None) -> None:
    """Raise :class:`StorageUnreachableError` (naming ``uri`` and the endpoint) if ``e`` says
    that the S3 endpoint cannot be reached or failed for now; else return. For code that reads
    with pyarrow directly, so that an outage is not taken for a broken file."""
    msg = str(e)
    if is_s3(uri) and _UNREACHABLE.search(msg):
        raise StorageUnreachableError(
            f"{op} {uri}: cannot reach the S3 endpoint {_endpoint_name(cfg)} ({msg.strip()}). "
            "Check AWS_ENDPOINT_URL (or storage.endpoint_url) and that the server is up."
        ) from e
    if is_s3(uri) and _TRANSIENT.search(msg):
        raise StorageUnreachableError(
            f"{op} {uri}: the S3 endpoint {_endpoint_name(cfg)} failed for now "
            f"({msg.strip()})") from e


T = TypeVar("T")


#: An attempt that ran this long before failing reached the storage meanwhile (seconds).
PROGRESS_S = 60.0


def retry_while_unreachable(fn: Callable[[], T], cfg: StorageConfig | None) -> T:
    """``fn()``, started again while it raises :class:`StorageUnreachableError`, with backoff
    from 0.5 s to 10 s, for up to ``storage.outage_s``; then one error that says so. For work
    that can be repeated whole (a read, a whole-object write, a clip, a file)."""
    limit = (cfg or DEFAULT).resolved().outage_s
    t0, delay = None, 0.5
    while True:
        started = time.monotonic()
        try:
            return fn()
        except StorageUnreachableError as e:
            if t0 is None or time.monotonic() - started > PROGRESS_S:
                # the outage's start, not fn's; an attempt that ran for minutes got through
                # for a while: its failure starts a new outage (two blips an hour apart in
                # one long video are not one outage of an hour)
                t0, delay = time.monotonic(), 0.5
            waited = time.monotonic() - t0
            if "(storage.outage_s)" in str(e):
                raise  # retried already, within fn
            if waited + delay > limit:
                raise StorageUnreachableError(
                    f"{e} Still unreachable after {waited:.0f} s of retries "
                    "(storage.outage_s); start the job again once it is up") from None
            time.sleep(delay)
            delay = min(2 * delay, 10.0)


def outlasts_outages(fn: Callable) -> Callable:
    """Decorate an S3 operation ``fn(uri, ..., cfg)`` so that it is repeated while its endpoint
    cannot be reached (:func:`retry_while_unreachable`). For operations that can be repeated
    whole: reads, whole-object writes, listings, deletes."""

    @functools.wraps(fn)
    def retried(uri, *args, **kwargs):
        if not is_s3(str(uri)):
            return fn(uri, *args, **kwargs)
        cfg = kwargs.get("cfg", next((a for a in args if isinstance(a, StorageConfig)), None))
        return retry_while_unreachable(lambda: fn(uri, *args, **kwargs), cfg)

    return retried


@outlasts_outages
def exists(uri: str, cfg: StorageConfig | None = None) -> bool:
    """Whether a file or directory exists at ``uri``."""
    fs, path = resolve(uri, cfg)
    with errors("stat", uri, cfg):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


@outlasts_outages
def is_file(uri: str, cfg: StorageConfig | None = None) -> bool:
    fs, path = resolve(uri, cfg)
    with errors("stat", uri, cfg):
        return fs.get_file_info(path).type == pafs.FileType.File


def check_reachable(uri: str, cfg: StorageConfig | None = None) -> None:
    """Fail fast with a clear :class:`StorageError` if the storage of ``uri`` can't be reached."""
    if not is_s3(uri):
        return
    fs, path = resolve(uri, cfg)
    bucket = path.split("/", 1)[0]
    with errors("reach", uri, cfg):
        fs.get_file_info(bucket)


@outlasts_outages
def makedirs(uri: str, cfg: StorageConfig | None = None) -> None:
    """Create a directory (locally) or the bucket (on S3; prefixes need no creation)."""
    fs, path = resolve(uri, cfg)
    with errors("mkdir", uri, cfg):
        if is_s3(uri):
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                fs.create_dir(bucket)
        else:
            os.makedirs(path, exist_ok=True)


@outlasts_outages
def read_bytes(uri: str, cfg: StorageConfig | None = None) -> bytes:
    """The whole content of the file at ``uri``."""
    fs, path = resolve(uri, cfg)
    with errors("read", uri, cfg), fs.open_input_stream(path) as f:
        return f.read()


def open_input(uri: str, cfg: StorageConfig | None = None) -> BinaryIO:
    """A seekable binary file object for reading ``uri`` (the caller closes it)."""
    fs, path = resolve(uri, cfg)
    with errors("open", uri, cfg):
        if not is_s3(uri):
            return open(path, "rb")  # noqa: SIM115 - handed to the caller
        return fs.open_input_file(path)


@contextlib.contextmanager
def open_atomic(uri: str, cfg: StorageConfig | None = None) -> Iterator[BinaryIO]:
    """Open ``uri`` for writing so that it appears whole or not at all, streaming.

    Locally the data goes to a hidden temporary file in the same directory, which is renamed
    over ``uri`` when the block ends without an exception. On S3 it streams to a hidden
    temporary object (a multipart upload: memory stays at a few upload parts whatever the size),
    which is moved to ``uri`` (a server-side copy) once complete. On an exception the temporary
    file or object is deleted and an existing ``uri`` is left as it was.
    """
    uri = normalize(uri)
    fs, path = resolve(uri, cfg)
    # (the name cut to fit the 255-byte limit of a file name with the 15 bytes added)
    tmp_name = f".{basename(uri).encode()[:200].decode(errors='ignore')}.{uuid.uuid4().hex[:8]}.tmp"
    if is_s3(uri):
        fs = _s3((cfg or DEFAULT).resolved(), background_writes=False)
        tmp = f"{path.rsplit('/', 1)[0]}/{tmp_name}"
        with errors("write", uri, cfg):
            out = fs.open_output_stream(tmp)
        try:
            yield out
            with errors("write", uri, cfg):
                out.close()
                fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                out.close()
                fs.delete_file(tmp)
            raise
        return
    directory = os.path.dirname(path)
    with errors("write", uri, cfg):
        os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, tmp_name)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@outlasts_outages
def write_bytes(uri: str, data: bytes, cfg: StorageConfig | None = None) -> None:
    """Write ``data`` to ``uri`` atomically (on S3 in one request: an object is visible only
    once its upload completes)."""
    uri = normalize(uri)
    if is_s3(uri):
        fs, path = resolve(uri, cfg)
        with errors("write", uri, cfg), fs.open_output_stream(path) as out:
            out.write(data)
        return
    with errors("write", uri, cfg), open_atomic(uri, cfg) as f:  # e.g. a full disk: one line
        f.write(data)


def write_text(uri: str, text: str, cfg: StorageConfig | None = None) -> None:
    write_bytes(uri, text.encode(), cfg)


def read_text(uri: str, cfg: StorageConfig | None = None) -> str:
    return read_bytes(uri, cfg).decode()


def upload_file(local_path: str, uri: str, cfg: StorageConfig | None = None) -> None:
    """Copy a local file to ``uri`` atomically, streaming (memory does not grow with its size);
    started again from the local file while S3 cannot be reached (``storage.outage_s``). On S3
    one multipart upload to the key itself, so there is no size limit (a server-side copy of a
    temporary object stops at 5 GiB)."""
    _upload(uri, local_path, cfg)


@outlasts_outages
def _upload(uri: str, local_path: str, cfg: StorageConfig | None) -> None:
    uri = normalize(uri)
    if not is_s3(uri):
        with open(local_path, "rb") as src, errors("write", uri, cfg), \
                open_atomic(uri, cfg) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        return
    # Straight to the key: a multipart upload is visible only once complete (a kill leaves
    # nothing), and a temporary object's move is a server-side copy, which S3 refuses past
    # 5 GiB (a long video could never be written). The size is checked after: a failed upload
    # that the stream completed anyway is deleted, never left as a finished file.
    fs, path = resolve(uri, cfg)
    fs = _s3((cfg or DEFAULT).resolved(), background_writes=False)
    size = os.path.getsize(local_path)
    with open(local_path, "rb") as src, errors("write", uri, cfg):
        try:
            with fs.open_output_stream(path) as dst:
                shutil.copyfileobj(src, dst, length=8 << 20)
            written = fs.get_file_info(path).size
        except BaseException:
            with contextlib.suppress(Exception):
                if fs.get_file_info(path).size != size:
                    fs.delete_file(path)
            raise
    if written != size:
        with contextlib.suppress(Exception):
            fs.delete_file(path)
        raise StorageError(f"write {uri}: {written} of {size} bytes arrived; deleted")


@outlasts_outages
def delete(uri: str, cfg: StorageConfig | None = None) -> None:
    """Delete a file, or a directory tree; no error if it does not exist."""
    fs, path = resolve(uri, cfg)
    with errors("delete", uri, cfg):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            fs.delete_file(path)
        elif info.type == pafs.FileType.Directory:
            fs.delete_dir(path)


@outlasts_outages
def list_files(uri: str, cfg: StorageConfig | None = None, recursive: bool = True) -> list[str]:
    """URIs of the files below ``uri`` (sorted; hidden temporary files left out).

    Raises:
        StorageNotFoundError: if ``uri`` does not exist.
    """
    uri = normalize(uri)
    fs, path = resolve(uri, cfg)
    with errors("list", uri, cfg):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [uri]
        if info.type == pafs.FileType.NotFound and not is_s3(uri):
            raise FileNotFoundError(path)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive,
                                                   allow_not_found=is_s3(uri)))
        if is_s3(uri) and not infos and info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
    prefix = _S3 if is_s3(uri) else ""
    return sorted(prefix + i.path for i in infos
                  if i.type == pafs.FileType.File and not i.base_name.startswith("."))


#: The name :func:`open_atomic` gives a temporary file: ``.NAME.XXXXXXXX.tmp`` (8 hex digits).
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


@outlasts_outages
def delete_temporaries(uri: str, cfg: StorageConfig | None = None,
                       recursive: bool = True) -> int:
    """Delete the hidden temporary files (``.NAME.XXXXXXXX.tmp``) of :func:`open_atomic` in
    ``uri`` (and below it, if ``recursive``): what writes cut short by a kill leave. Only for a
    folder that no one else writes (see :mod:`bluref_ray.writer`). Returns how many were
    deleted."""
    uri = normalize(uri)
    fs, path = resolve(uri, cfg)
    with errors("list", uri, cfg):
        if fs.get_file_info(path).type == pafs.FileType.File:
            return 0
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive,
                                                   allow_not_found=True))
    tmp = [i.path for i in infos if i.type == pafs.FileType.File
           and _TEMPORARY.fullmatch(i.base_name)]
    with errors("delete", uri, cfg):
        for p in tmp:
            fs.delete_file(p)
    return len(tmp)


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob(pattern: str, cfg: StorageConfig | None = None) -> list[str]:
    """Files matching a glob (``*``, ``?``, ``**`` for any depth), e.g. ``s3://b/**/*.mp4``."""
    pattern = normalize(pattern)
    m = re.search(r"[*?]", pattern)
    if not m:
        return [pattern] if is_file(pattern, cfg) else []
    root = pattern[:m.start()].rsplit("/", 1)[0]
    if is_s3(pattern) and root.count("/") < 2:
        raise StorageError(f"{pattern}: the bucket of a glob cannot hold a wildcard")
    rest = pattern[len(root) + 1:]
    root = root or "/"  # "/x*": the file system's root
    regex = _glob_regex(rest)
    try:  # below root only as deep as the pattern reaches (not all of /data for /data/*.mp4)
        files = list_files(root, cfg, recursive="/" in rest or "**" in rest)
    except StorageNotFoundError:
        return []
    return [f for f in files if regex.match(relative(f, root))]
