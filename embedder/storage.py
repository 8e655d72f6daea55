"""Where a dataset's files live: the local disk, or an object store through fsspec (s3://,
gs://, az://, any fsspec URL).

A `Storage` is small and picklable (a protocol and its options), so reader processes, Ray
workers and DataLoader workers each open the files themselves, where they are decoded: photos
are never funnelled through the process that planned the run. Paths are strings: local paths,
or an object store's `bucket/key` (fsspec's form, without the protocol).

Credentials and endpoints come the usual way: `AWS_*` environment variables (key, secret,
region, AWS_ENDPOINT_URL), or `--storage-option key=value` (`endpoint_url=http://host:8333`,
`key=...`, `secret=...`, `anon=true`), never from the dataset or the collection.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from embedder.errors import UserError, first_line

# The package that gives fsspec each protocol, and the extra that installs it.
PACKAGES = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
}
# S3 clients time out and retry on their own (throttling included: 503 SlowDown is retried with
# backoff by botocore's standard mode); a caller's --storage-option config_kwargs replaces this.
S3_DEFAULTS = {
    "config_kwargs": {
        "connect_timeout": 10,
        "read_timeout": 60,
        "retries": {"max_attempts": 8, "mode": "standard"},
    }
}
FETCH_BATCH = 64  # objects requested at once by fetch(): concurrent GETs on fsspec's event loop


class StorageError(UserError, OSError):
    """An object store that cannot be used: missing bucket, refused credentials, no answer."""


def parse_options(pairs: Iterable[str] | None) -> dict:
    """`--storage-option key=value` pairs as fsspec keywords; a value that reads as JSON
    (true, 3, {"a": 1}) is that value, any other is the string."""
    options: dict = {}
    for pair in pairs or ():
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--storage-option {pair!r} is not KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


@dataclass(frozen=True)
class Storage:
    """A file system: "file" (the local disk, read with the os module) or an fsspec protocol,
    with the keywords that open it. Each process opens its own client (fsspec caches it per
    process and forgets it across a fork)."""

    protocol: str = "file"
    options: str = "{}"  # the keywords as JSON: hashable, picklable, the same in every process

    @property
    def local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self):
        import fsspec

        keywords = json.loads(self.options)
        if self.protocol in ("s3", "s3a"):
            keywords = {**S3_DEFAULTS, **keywords}
        return fsspec.filesystem(self.protocol, **keywords)

    def url(self, path: str) -> str:
        """The path as a user writes it: a local path, or protocol://bucket/key."""
        return path if self.local else f"{self.protocol}://{path}"

    def source(self, path: str):
        """What Pillow opens: the local path itself, or the object's bytes."""
        if self.local:
            return path
        return io.BytesIO(self.fs.cat_file(path))

    def fetch(self, paths: list[str]) -> list[bytes | BaseException]:
        """Many objects' bytes (concurrent requests), or per object the error that stopped it."""
        got = {}
        for start in range(0, len(paths), FETCH_BATCH):
            part = paths[start : start + FETCH_BATCH]
            answer = self.fs.cat(part, on_error="return")
            got.update(answer if isinstance(answer, dict) else {part[0]: answer})
        return [got.get(p, FileNotFoundError(p)) for p in paths]

    def open_text(self, path: str):
        """A text file to read, or None when there is none."""
        if self.local:
            return open(path, encoding="utf-8", errors="replace") if os.path.isfile(path) else None
        with errors(self, path):
            if not self.fs.isfile(path):
                return None
            return io.StringIO(self.fs.cat_file(path).decode("utf-8", "replace"))


LOCAL = Storage()


def split(root: str, options: dict | None = None) -> tuple[Storage, str]:
    """A root as the user gave it → its Storage and the path in it (a local path, or
    bucket/prefix without a final slash). file:// URLs are local paths."""
    root = str(root)
    protocol, sep, rest = root.partition("://")
    if not sep or protocol == "file" or os.path.sep in protocol or not protocol.isidentifier():
        if options:
            raise UserError("--storage-option is for object-store roots (s3://, gs://, ...)")
        return LOCAL, rest if protocol == "file" and sep else root
    protocol = protocol.lower()
    _check_installed(protocol, root)
    return Storage(protocol, json.dumps(options or {}, sort_keys=True)), rest.rstrip("/")


def is_remote(root) -> bool:
    protocol, sep, _ = str(root).partition("://")
    return bool(sep) and protocol.isidentifier() and protocol != "file"


def _check_installed(protocol: str, root: str) -> None:
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        package, extra = PACKAGES.get(protocol, (protocol + "fs", protocol))
        raise UserError(
            f"{root!r}: reading {protocol}:// needs {package}: "
            f"pip install 'fashion-retrieval[{extra}]'"
        ) from None
    except ValueError:
        raise UserError(f"{root!r}: no file system is known for {protocol}://") from None


@contextlib.contextmanager
def errors(storage: Storage, path: str) -> Iterator[None]:
    """An object store's failure as one StorageError line naming the URL and what to check."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError as exc:
        raise StorageError(f"{storage.url(path)} does not exist ({first_line(exc)})") from None
    except PermissionError as exc:
        raise StorageError(
            f"access to {storage.url(path)} refused: {first_line(exc)} (check the credentials: "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or --storage-option key=... secret=...)"
        ) from None
    except Exception as exc:  # botocore's connection errors are not OSErrors
        raise StorageError(
            f"cannot read {storage.url(path)}: {first_line(exc)[:200]} (is the endpoint right? "
            "AWS_ENDPOINT_URL or --storage-option endpoint_url=...)"
        ) from None


def listing(storage: Storage, top: str) -> list[tuple[str, int, int]]:
    """Every object below `top` as (path below top, size, change stamp), in one paginated
    listing (ListObjectsV2 pages of 1,000 keys for S3: no request per object). The stamp is
    the object's modification time in ns; object stores give whole seconds, so the ETag's
    digest fills the sub-second digits: an object rewritten within the same second, same
    size, still reads as changed."""
    with errors(storage, top):
        found = storage.fs.find(top, detail=True)
    cut = len(top.rstrip("/")) + 1
    return [
        (name[cut:], int(info.get("size") or 0), stamp(info))
        for name, info in found.items()
        if info.get("type", "file") == "file" and len(name) > cut
    ]


TIME_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


def stamp(info: dict) -> int:
    """An object's change stamp (see listing) from what its store reports."""
    when = next((info[k] for k in TIME_FIELDS if info.get(k) is not None), None)
    if isinstance(when, str):
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    seconds = (
        when.timestamp() if isinstance(when, datetime) else float(when) if when is not None else 0
    )
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation")
    digest = int(hashlib.blake2b(str(tag).encode(), digest_size=8).hexdigest(), 16) if tag else 0
    return int(seconds) * 1_000_000_000 + digest % 1_000_000_000


def upload(folder: str, storage: Storage, target: str) -> None:
    """A local folder's files to target (bucket/prefix), keeping their paths below folder."""
    with errors(storage, target):
        files = [os.path.join(here, name) for here, _, names in os.walk(folder) for name in names]
        keys = [target + "/" + os.path.relpath(f, folder).replace(os.sep, "/") for f in files]
        storage.fs.put(files, keys)
