"""
Object storage: `s3://bucket/key`, `gs://bucket/key` (and any other fsspec protocol installed) wherever a path is
taken: inputs read in place, outputs uploaded whole.

Takes: URLs as the user wrote them, and the job's `storage.options` (`--storage-option KEY=VALUE`: what the
protocol's filesystem takes, an endpoint or anonymous access; never a secret). Credentials come the standard way
only: AWS's variables and credential chain (`AWS_ENDPOINT_URL`, keys, profiles, instance and pod roles), Google's
application default credentials; each node of a cluster uses its own.
Gives: `is_remote`; `open_input` (a seekable file for PyAV: ranged GETs with one read-ahead block, so memory stays
flat whatever the object's size); `upload` (a finished local file or folder, whole: one PUT, or a multipart upload
completed at the end and aborted on failure); small objects (`read_bytes`, `write_bytes`, optionally only where
nothing is: the store's conditional write); listing (`find`), `info`, `remove`; `check_readable` / `check_writable`
(before any work: the object is there, the bucket exists and takes writes); `abort_uploads` (multipart uploads a
killed run left open); and `storage_errors`, which turns what the libraries raise into one line naming the URL.

Why fsspec: the Python data ecosystem's common layer (Ray Data, pandas, Dask and PyArrow take its filesystems), one
API over s3fs, gcsfs and the rest, and its files are ordinary file objects that PyAV reads and seeks.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.urls import is_url, redact

__all__ = [
    "ObjectReadError", "ObjectReader", "abort_uploads", "check_readable", "check_writable", "configure", "exists",
    "filesystem", "find", "info", "input_stamp", "is_object", "is_prefix", "is_remote", "join", "name_of",
    "open_input", "option_problem", "parent", "read_all", "read_bytes", "readable", "remove", "stamp_of",
    "storage_errors", "upload", "write_bytes",
]

# Which extra brings which protocol's library (a missing one is one line saying which to install)
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}
READ_BLOCK = 8 * 2**20  # one ranged GET; the read-ahead cache holds one block
PART_SIZE = 8 * 2**20  # multipart upload parts (an upload holds one part at a time)
# A slow or silent server ends in an error, not a hang; transient faults are retried with backoff (botocore's
# standard mode: exponential, jittered) before an item fails. No listing cache: other processes, other nodes, write
# the same prefixes
S3_DEFAULTS = {"use_listings_cache": False,
               "config_kwargs": {"connect_timeout": 10, "read_timeout": 60,
                                 "retries": {"max_attempts": 3, "mode": "standard"}}}
S3FS_RETRIES = 3  # s3fs's own retries around botocore's (5 by default: a dead server took 40 s to give up on)
SECRET_WORDS = ("secret", "password", "token", "credential", "session")
SECRET_KEYS = {"key", "access_key", "access_key_id", "aws_access_key_id"}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_options: dict = {}  # this process's storage options (configure)


def is_remote(path) -> bool:
    """An object-store URL (s3://, gs://, ...): not a local path, and not a stream PyAV opens by URL (rtsp, http)."""
    match = _SCHEME.match(str(path))
    return bool(match) and not is_url(path) and match.group(1).lower() != "file"


def protocol_of(url: str) -> str:
    return _SCHEME.match(url).group(1).lower()


def option_problem(options) -> str | None:
    """What is wrong with storage options (None: nothing). Secrets are refused: they would travel in the job's
    settings to every node and into logs; credentials come from the environment's standard chain."""
    if not isinstance(options, Mapping):
        return f"must be a mapping of KEY: VALUE, got {options!r}"
    for key, value in options.items():
        name = str(key).lower()
        if name in SECRET_KEYS or (any(word in name for word in SECRET_WORDS) and value != "anon"):
            return (f"{key!r} is a secret: credentials come from the standard chain (AWS_ACCESS_KEY_ID / "
                    f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role; Google's application default "
                    f"credentials), never from a setting")
    return None


def configure(options: Mapping | None) -> None:
    """This process's storage options (the job's `storage.options`): set by the driver and by each actor."""
    global _options
    options = dict(options or {})
    if options != _options:
        _options = options
        _filesystem_cache.clear()
        _fixed_clients.clear()


_filesystem_cache: dict = {}
_fixed_clients: dict = {}  # protocol -> the client _without_expect_continue last fixed


def filesystem(url: str):
    """(the fsspec filesystem, the path within it) for a URL; a missing library is one line naming the extra."""
    protocol = protocol_of(url)
    if protocol not in _filesystem_cache:
        import fsspec

        options = _merged(S3_DEFAULTS if protocol in ("s3", "s3a") else {}, _options)
        try:
            _filesystem_cache[protocol] = fsspec.filesystem(protocol, **options)
        except ImportError:
            library, extra = EXTRAS.get(protocol, (f"the fsspec implementation of {protocol}://", None))
            install = f"pip install 'video-depth[{extra}]'" if extra else f"install {library}"
            raise PipelineError(f"{redact(url)}: reading {protocol}:// needs {library}: {install}") from None
        except ValueError as error:
            if "Protocol not known" in str(error):
                raise PipelineError(f"{redact(url)}: unknown storage protocol {protocol}://") from None
            raise PipelineError(f"{redact(url)}: storage options: {error}") from None
        except TypeError as error:
            raise PipelineError(f"{redact(url)}: storage options: {error}") from None
    fs = _filesystem_cache[protocol]
    if protocol in ("s3", "s3a") and getattr(fs, "_s3", None) is not _fixed_clients.get(protocol, False):
        _without_expect_continue(fs, url)  # (a new client: made now, or again by s3fs on a credential refresh)
        _fixed_clients[protocol] = fs._s3
    return fs, fs._strip_protocol(url)


def _without_expect_continue(fs, url: str) -> None:
    """s3fs's retries set, and botocore's `Expect: 100-continue` left out of uploads: aiohttp waits for the "100
    Continue" without any timeout, so a server that took the connection and never answered held an upload forever
    (measured: a PUT still waiting after 10 minutes with a 1 s read timeout; without the header it failed in 24 s).
    The cost: a refused upload sends its part (8 MB at most) before hearing no."""
    from botocore.handlers import add_expect_header

    fs.retries = S3FS_RETRIES
    with storage_errors(url, "starting its client"):
        fs.connect()
    fs.s3.meta.events.unregister("before-call.s3", add_expect_header)


def _merged(defaults: Mapping, options: Mapping) -> dict:
    """`options` over `defaults`, nested mappings merged (config_kwargs.read_timeout keeps the default retries)."""
    merged = dict(defaults)
    for key, value in options.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, Mapping) and isinstance(
            merged.get(key), Mapping) else value
    return merged


def _is_missing_bucket(error: BaseException) -> bool:
    return "bucket" in str(error).lower() and ("not exist" in str(error).lower() or "nosuchbucket" in str(error).lower())


def describe(error: BaseException) -> str:
    """One line of what went wrong talking to the store (never a credential: botocore's messages hold none)."""
    text = " ".join(str(error).split()) or type(error).__name__
    names = {type(error).__name__, *(type(e).__name__ for e in (error.__cause__, error.__context__) if e)}
    if isinstance(error, FileNotFoundError):
        return "the bucket does not exist" if _is_missing_bucket(error) else "no such object"
    if isinstance(error, FileExistsError):
        return "exists already (a conditional write found it there)"
    if "NoCredentialsError" in names or "Unable to locate credentials" in text:
        return ("no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an "
                "instance or pod role)")
    if isinstance(error, PermissionError):
        if any(word in text for word in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "does not exist in our records",
                                         "signature we calculated")):
            return f"the credentials were refused ({text[:160]})"
        return f"access denied ({text[:160]})"
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                "ServerDisconnectedError", "ClientOSError", "ConnectionClosedError"} or isinstance(
            error, (ConnectionError, TimeoutError)):
        return f"the storage server could not be reached or stopped answering ({text[:160]})"
    return text[:200]


@contextlib.contextmanager
def storage_errors(url: str, doing: str = "") -> Iterator[None]:
    """What the store's libraries raise inside, as one PipelineError line naming the URL (and what was being done)."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as error:  # noqa: BLE001 - every library error becomes one line naming the URL
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        what = f" ({doing})" if doing else ""
        raise PipelineError(f"{redact(url)}: {describe(error)}{what}") from None


def info(url: str) -> dict:
    fs, path = filesystem(url)
    with storage_errors(url):
        return fs.info(path)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    with storage_errors(url):
        return fs.exists(path)


def input_stamp(url: str) -> dict:
    """What says an object is the same as last time: its size and ETag (or generation, or modification time)."""
    return stamp_of(info(url))


def stamp_of(details: dict) -> dict:
    """input_stamp from an object's info as a listing gives it (no request of its own)."""
    tag = details.get("ETag") or details.get("etag") or details.get("generation") or details.get("mtime") or \
        details.get("LastModified")
    return {"size": details.get("size"), "etag": str(tag).strip('"') if tag is not None else None}


def is_object(url: str) -> bool:
    """An object (not a prefix, not missing), asked once."""
    fs, path = filesystem(url)
    with storage_errors(url):
        try:
            return fs.info(path).get("type") != "directory"
        except FileNotFoundError as error:
            if _is_missing_bucket(error):
                raise
            return False


def check_readable(url: str, what: str = "input") -> dict:
    """The object is there and is an object (not a prefix): its info; else one line naming it."""
    fs, path = filesystem(url)
    with storage_errors(url, f"reading the {what}"):
        try:
            details = fs.info(path)
        except FileNotFoundError as error:
            if _is_missing_bucket(error):
                raise
            raise PipelineError(f"{redact(url)}: no such object") from None
    if details.get("type") == "directory":
        raise PipelineError(f"{redact(url)}: a prefix (a folder of objects), not an object")
    if not details.get("size"):
        raise PipelineError(f"{redact(url)}: the {what} object is empty")
    return details


def check_writable(prefix: str, flag: str = "output") -> None:
    """The bucket exists and takes writes under `prefix`: a small probe object written and removed again."""
    fs, path = filesystem(prefix)
    probe = f"{path.rstrip('/')}/.video-depth-probe-{uuid.uuid4().hex[:12]}"
    with storage_errors(prefix, f"the {flag} must be writable"):
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)


def open_input(url: str, size: int | None = None) -> "ObjectReader":
    """A read-only, seekable file over the object for PyAV: ranged GETs of READ_BLOCK, one block read ahead.
    `size`: the object's, when known (spares the file its own HEAD request)."""
    fs, path = filesystem(url)
    with storage_errors(url, "opening it"):
        return ObjectReader(url, fs.open(path, "rb", block_size=READ_BLOCK, cache_type="readahead", size=size))


class ObjectReadError(OSError):
    """A read of an object that failed after the library's retries: its message is one line naming the URL."""


class ObjectReader:
    """An object's file as PyAV reads it (read, seek, tell), whose failures are OSErrors naming the URL: what the
    store's libraries raise mid-stream (a dropped connection, after their retries) passes through FFmpeg's read
    callback as the stream's own error, not as an internal one."""

    def __init__(self, url: str, file):
        self.url, self._file = url, file

    def _failed(self, error: Exception) -> ObjectReadError:
        return ObjectReadError(f"{redact(self.url)}: {describe(error)} (reading it)")

    def read(self, size: int = -1) -> bytes:
        try:
            return self._file.read(size)
        except Exception as error:  # noqa: BLE001 - every library error becomes one line naming the URL
            raise self._failed(error) from None

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return self._file.seek(offset, whence)
        except Exception as error:  # noqa: BLE001
            raise self._failed(error) from None

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()


def readable(source):
    """What `av.open` takes for a source: a path or stream URL as it is; for an object, a seekable file over it
    (closed with the container that holds it, when that is collected)."""
    if not is_remote(source):
        return str(source)
    return open_input(str(source), check_readable(str(source)).get("size"))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with storage_errors(url, "reading it"):
        return fs.cat_file(path)


def read_all(urls: list[str]) -> dict[str, bytes]:
    """Many small objects at once (fetched concurrently): URL -> its bytes."""
    if not urls:
        return {}
    fs, _ = filesystem(urls[0])
    with storage_errors(parent(urls[0]), "reading it"):
        found = fs.cat([fs._strip_protocol(url) for url in urls])
    return {fs.unstrip_protocol(path): data for path, data in found.items()}


def write_bytes(url: str, data: bytes | str, if_absent: bool = False) -> None:
    """A small object, whole (one PUT); `if_absent`: only where nothing is (If-None-Match: *), else FileExistsError
    as a one-line PipelineError."""
    fs, path = filesystem(url)
    data = data.encode() if isinstance(data, str) else data
    with storage_errors(url, "writing it"):
        if if_absent:
            with fs.open(path, "xb") as file:
                file.write(data)
        else:
            fs.pipe_file(path, data)


def upload(local: Path, url: str, if_absent: bool = False, last: str | None = None) -> None:
    """A finished local file (or folder: every file below it, `last` named file last, as the folder's sign of being
    complete) to `url`: each object appears whole or not at all (a multipart upload is completed at the end and
    aborted on failure). `if_absent`: the store's conditional write (a file only)."""
    fs, path = filesystem(url)
    local = Path(local)
    with storage_errors(url, "uploading"):
        if local.is_dir():
            files = sorted(p for p in local.rglob("*") if p.is_file())
            files.sort(key=lambda p: p.name == last)
            for file in files:
                fs.put_file(str(file), f"{path.rstrip('/')}/{file.relative_to(local).as_posix()}",
                            chunksize=PART_SIZE)
        else:
            fs.put_file(str(local), path, chunksize=PART_SIZE, mode="create" if if_absent else "overwrite")


def find(prefix: str, detail: bool = False, depth: int | None = None) -> list[str] | dict[str, dict]:
    """Every object below a prefix (`depth` 1: directly below it), as sorted URLs; `detail`: URL -> its info."""
    fs, path = filesystem(prefix)
    with storage_errors(prefix, "listing it"):
        if not fs.exists(path):
            return {} if detail else []
        found = fs.find(path.rstrip("/"), maxdepth=depth, withdirs=False, detail=True)
    found = {fs.unstrip_protocol(key): value for key, value in sorted(found.items())
             if value.get("type") != "directory"}
    return found if detail else list(found)


def is_prefix(url: str) -> bool:
    fs, path = filesystem(url)
    with storage_errors(url):
        return fs.isdir(path)


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    with storage_errors(url, "removing it"):
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass


def abort_uploads(url: str, started_before: datetime.datetime | None = None) -> int:
    """Multipart uploads to `url` (a key, or a prefix ending in /) that a killed run left open, aborted (S3 keeps
    their parts, billed and invisible, until then); those started after `started_before` belong to a live writer and
    stay. Stores without multipart uploads: nothing to do. The number aborted."""
    if protocol_of(url) not in ("s3", "s3a"):
        return 0
    fs, path = filesystem(url)
    bucket, _, key = path.partition("/")
    aborted = 0
    with storage_errors(url, "aborting the uploads a killed run left"):
        listing = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
        for upload in listing.get("Uploads", []) or []:
            if upload["Key"] != key and not (key.endswith("/") or key == ""):
                continue
            if started_before is not None and upload["Initiated"] >= started_before:
                continue
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    return aborted


# .....................................................................................................................
# Remote names as text: a URL is never a Path (Path("s3://b/k") is "s3:/b/k")

def join(base: str | Path, *parts: str) -> str | Path:
    """`base` / parts: a Path for a local base, a URL for a remote one."""
    if not is_remote(base):
        return Path(base).joinpath(*parts)
    tail = "/".join(str(part).strip("/") for part in parts if str(part) not in ("", "."))
    return f"{str(base).rstrip('/')}/{tail}" if tail else str(base)


def parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def name_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]
