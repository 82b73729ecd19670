"""One storage layer for every path a user gives: a local path or any fsspec URL (``s3://``,
``gs://``, ``memory://`` ...).

Clusters have no shared disk: a file one process wrote is visible to another only through the
storage the run URL names. So every job reads and writes run directories, exports and checkpoints
through these functions, and a process that needs a remote file as a local path gets a copy in
its own cache (``cache_dir()``), never a path on another node's disk.

S3-compatible endpoints other than AWS (MinIO, moto, Ceph) are reached with the standard
``AWS_ENDPOINT_URL`` variable, which s3fs (fsspec) and pyarrow (Ray Train) both read.

This is the one module that reads a URL's scheme (``tests/test_storage.py`` holds every other
module to that): a new backend is added here, and every reader and writer has it. It holds the
schemes, joins, reads and writes, directory uploads (``put``), streams for the shard reader
(``open_url``, also webdataset's ``pipe:CMD`` and http), and the per-node cache: its location
(``cache_dir``), its keys (``cache_path``) and cached copies of remote files (``cached_copy``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

LOCAL_SCHEMES = ("", "file")


def cache_dir() -> Path:
    """This process's cache: ``RAYMMR_CACHE``, default ``~/.cache/raymmr``. Each node has its own."""
    return Path(os.environ.get("RAYMMR_CACHE", Path.home() / ".cache" / "raymmr"))


def cache_path(kind: str, *key: str) -> Path:
    """Where this process caches the ``kind`` of thing identified by ``key`` (the parts that make a
    copy unique: a URL and its version, a config ...): ``cache_dir()/kind/<digest>``."""
    return cache_dir() / kind / hashlib.sha1("|".join(key).encode()).hexdigest()[:16]


def scheme(url: str) -> str:
    """``s3``, ``gs``, ``file``, ``memory``, ``http`` ... of a URL; ``pipe`` for webdataset's
    ``pipe:CMD``; "" for a local path."""
    url = str(url)
    if "://" in url:
        return url.split("://", 1)[0]
    return "pipe" if url.startswith("pipe:") else ""


# Where a run directory (a training job's or a sweep's --out) may live: Ray Train and Tune persist
# checkpoints through pyarrow, which knows these; raymmr's own reads and writes use fsspec.
RUN_SCHEMES = ("", "file", "s3", "gs")


def check_run_url(url: str, flag: str = "--out") -> None:
    """Refuse a run directory in a store Ray cannot persist checkpoints to, naming the ones it can."""
    from raymmr.errors import JobError

    if scheme(url) not in RUN_SCHEMES:
        raise JobError(f"{flag} {url}: a run directory must be a local path, s3://... or gs://... (Ray Train "
                       f"persists checkpoints there through pyarrow, which has no '{scheme(url)}://' filesystem)")


def is_remote(url: str) -> bool:
    """True for a URL that is not a local path (``s3://``, ``gs://``, ``memory://``, ``pipe:`` ...)."""
    return scheme(url) not in LOCAL_SCHEMES


def local_path(url: str) -> str:
    """The path of a local location (``file://`` stripped); a remote URL as it is."""
    url = str(url)
    return url[len("file://"):] if scheme(url) == "file" else url


def normalize(url: str) -> str:
    """A URL without a trailing slash, or an absolute local path (Ray workers run elsewhere)."""
    url = str(url)
    if is_remote(url):
        return url.rstrip("/")
    return str(Path(local_path(url)).expanduser().resolve())


def join(base: str, *names: str) -> str:
    base = str(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(n.strip("/") for n in names)])
    return str(Path(base, *names))


def parent(url: str) -> str:
    """The folder a file URL or path is in."""
    url = str(url)
    if is_remote(url):
        return url.rstrip("/").rsplit("/", 1)[0]
    return str(Path(url).parent)


def filesystem(url: str):
    """(fsspec filesystem, path within it). A missing protocol package is named with its fix."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(str(url))
    except ImportError as e:
        raise StorageError(f"{url}: this URL scheme needs an extra package ({e}); "
                           "s3:// needs s3fs, gs:// needs gcsfs") from None
    # Other processes write the same bucket: never answer from a listing cached earlier.
    fs.invalidate_cache()
    return fs, path


class StorageError(RuntimeError):
    """A location that cannot be read or written; the message names it and the fix."""


def exists(url: str) -> bool:
    if not is_remote(url):
        return Path(url).exists()
    fs, path = filesystem(url)
    return fs.exists(path)


def is_file(url: str) -> bool:
    if not is_remote(url):
        return Path(url).is_file()
    fs, path = filesystem(url)
    return fs.isfile(path)


def read_bytes(url: str) -> bytes:
    if not is_remote(url):
        return Path(url).read_bytes()
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(url: str) -> str:
    return read_bytes(url).decode()


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file; a local one appears atomically (a reader never sees half of it)."""
    if not is_remote(url):
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, path = filesystem(url)
    with fs.open(path, "wb") as f:  # object stores publish an object only when it is complete
        f.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode())


def names(url: str) -> list[str]:
    """The entry names directly under a directory URL (empty when there is none)."""
    if not is_remote(url):
        return sorted(p.name for p in Path(url).iterdir()) if Path(url).is_dir() else []
    fs, path = filesystem(url)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def sizes(url: str) -> dict[str, int]:
    """Every file under a directory URL (recursively), by its path relative to it, with its size."""
    if not is_remote(url):
        root = Path(url)
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    fs, path = filesystem(url)
    path = path.rstrip("/")
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    return {name[len(path) + 1:]: info["size"] for name, info in found.items() if info.get("type") != "directory"}


# Copying to object storage without fsspec's protocol package (gcsfs is an extra): the cloud's own
# command line, which cluster images have.
COPY_TOOLS = {"s3": ["aws", "s3", "cp"], "gs": ["gsutil", "cp"]}


def put(local: str | os.PathLike, url: str, *, last: str | None = None) -> None:
    """Copy a local file or directory to ``url`` (a no-op when ``url`` is that same local path).
    ``last``: a file of the directory copied after all others (a shard set's manifest, whose
    presence tells readers the set is complete)."""
    local = Path(local)
    if not is_remote(url):
        if Path(local_path(url)).resolve() == local.resolve():
            return
        if local.is_dir():
            held = (lambda folder, _: [last] if Path(folder) == local else []) if last else None
            shutil.copytree(local, local_path(url), dirs_exist_ok=True, ignore=held)
            if last:
                shutil.copyfile(local / last, Path(local_path(url)) / last)
        else:
            Path(local_path(url)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, local_path(url))
        return
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    files.sort(key=lambda f: f.name == last)  # stable: the rest keep their order
    names = [f.relative_to(local).as_posix() for f in files] if local.is_dir() else [None]
    try:
        fs, path = filesystem(url)
    except StorageError:
        if scheme(url) not in COPY_TOOLS:
            raise
        for f, name in zip(files, names):
            subprocess.run([*COPY_TOOLS[scheme(url)], str(f), join(url, name) if name else url], check=True)
        return
    for f, name in zip(files, names):
        fs.put_file(str(f), f"{path.rstrip('/')}/{name}" if name else path)


def open_url(url: str):
    """A readable binary stream for a local path, file://, pipe:CMD, s3://, gs:// or http(s):// URL
    (the shard reader's: one pass over a whole file). s3:// and gs:// use fsspec when it has the
    protocol (s3fs / gcsfs), otherwise the ``aws`` / ``gsutil`` command line through webdataset's
    ``pipe:``."""
    import webdataset as wds

    kind = scheme(url)
    if kind in LOCAL_SCHEMES:
        return open(local_path(url), "rb")  # noqa: SIM115 - the caller closes it
    if kind in ("s3", "gs"):
        with contextlib.suppress(ImportError, ValueError):
            import fsspec

            fsspec.get_filesystem_class(kind)  # ImportError without s3fs / gcsfs
            return fsspec.open(url, "rb").open()
        if kind == "s3":
            return wds.gopen(f"pipe:aws s3 cp {shlex.quote(url)} -")
    return wds.gopen(url)  # pipe:, http(s) (curl), gs (gsutil cat)


def remove(url: str) -> None:
    """Delete one file, local or in object storage; nothing to do when it is not there."""
    if not is_remote(url):
        Path(url).unlink(missing_ok=True)
        return
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path)


def move(src: str, dst: str) -> None:
    """Rename a file or directory (on object stores: copy, then delete)."""
    if not is_remote(src):
        Path(src).rename(dst)
        return
    fs, path = filesystem(src)
    _, target = filesystem(dst)
    if fs.isfile(path):
        fs.mv(path, target)
        return
    # A "directory" is only a key prefix: s3fs's recursive mv also copies the prefix itself, as
    # if it were an object, and fails (NoSuchKey). Copy every object under it, then delete them.
    files = fs.find(path)
    if not files:
        raise FileNotFoundError(src)
    for f in files:
        fs.copy(f, target + f[len(path.rstrip("/")):])
    fs.rm(path, recursive=True)


def get(url: str, local: str | os.PathLike) -> Path:
    """Copy a remote file or directory to ``local``; returns ``local``."""
    local = Path(local)
    fs, path = filesystem(url)
    if fs.isdir(path):
        files = [p for p in fs.find(path) if not p.endswith("/")]
        for f in files:
            dst = local / f[len(path.rstrip("/")) + 1:]
            dst.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f, str(dst))
    else:
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(local))
    return local


def fingerprint(url: str) -> str:
    """A digest of what is at ``url`` now: every file's path, size and version (ETag, else its
    modification time). A rewritten file gives a new fingerprint."""
    fs, path = filesystem(url)
    entries = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    if not entries:
        raise FileNotFoundError(url)
    parts = []
    for name, info in sorted(entries.items()):
        version = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
        parts.append(f"{name[len(path):]}|{info.get('size')}|{version}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def local_source(source: str, kind: str) -> str:
    """A file or directory a config names (pretrained weights, a tokenizer) as a local path: a
    storage URL (s3://, gs://, ...) is copied into this node's cache (``cached_copy``); a local
    path, a Hugging Face name or ``hub:<name>`` is returned as it is."""
    return str(cached_copy(source, kind)) if source and is_remote(source) else source


CACHE_BUDGET_ENV = "RAYMMR_CACHE_GB"  # each cache kind is pruned to this size (default 50 GB)
CACHE_KEEP_RECENT_S = 3600  # a copy used within this is never pruned (a reader may hold it open)


def cached_copy(url: str, kind: str, name: str | None = None) -> Path:
    """A local copy of ``url`` (file or directory) in this process's cache under ``kind/``; a local
    path is returned as it is. Copies are keyed by the URL and its ``fingerprint``, so a changed
    remote is copied anew and an existing copy never changes under a reader; a copy appears
    atomically. One process per node downloads (a lock file beside the copy): the other ranks on
    the node wait for it and use its copy. After a download the kind is pruned to its budget
    (``prune_cache``). ``name``: the copy's file name (default: the URL's last part; give it for a
    ``pipe:CMD``, which is copied once per command, having no version to compare)."""
    import fcntl

    if not is_remote(url):
        path = Path(normalize(url))
        if not path.exists():
            raise FileNotFoundError(url)
        return path
    url = normalize(url)
    piped = scheme(url) == "pipe"  # a command's output: one file, known by the command alone
    name = name or url.rsplit("/", 1)[-1]
    dst = cache_path(kind, url, "" if piped else fingerprint(url)) / name
    if dst.exists():
        os.utime(dst.parent)  # last use, for pruning
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not dst.exists():
            tmp = dst.parent / f".{name}.tmp{os.getpid()}-{time.monotonic_ns()}"
            if piped:
                with open_url(url) as src:
                    tmp.write_bytes(src.read())
            else:
                get(url, tmp)
            os.replace(tmp, dst)
            prune_cache(kind, keep=dst.parent)
    os.utime(dst.parent)
    return dst


def prune_cache(kind: str, keep: Path | None = None, budget_bytes: float | None = None,
                now: float | None = None) -> list[Path]:
    """Delete the least recently used copies of ``kind`` until the rest fit the budget
    (``RAYMMR_CACHE_GB``, default 50 GB): checkpoints copied at every restart of a long run would
    otherwise fill the node's disk. Copies used in the last ``CACHE_KEEP_RECENT_S`` and ``keep``
    stay. Returns what was deleted."""
    if budget_bytes is None:
        budget_bytes = float(os.environ.get(CACHE_BUDGET_ENV, "50")) * 1e9
    now = time.time() if now is None else now
    root = cache_dir() / kind
    entries = []
    for entry in (root.iterdir() if root.is_dir() else ()):
        if entry.is_dir():
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            entries.append((entry.stat().st_mtime, size, entry))
    total = sum(size for _, size, _ in entries)
    deleted = []
    for used, size, entry in sorted(entries, key=lambda e: e[0]):  # oldest use first
        if total <= budget_bytes:
            break
        if entry == keep or now - used < CACHE_KEEP_RECENT_S:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
        deleted.append(entry)
    return deleted


WEIGHTS = "model.safetensors"  # an export's weights (raymmr.model.export)
EXPORT = "export"  # a run directory's export folder


class NoExport(FileNotFoundError):
    """No raymmr export where a user pointed; the message names the place (a job reports it in one
    line)."""


def require_export(url: str, what: str | None = None) -> str:
    """``find_export``, refusing a place with no export: ``what`` names it in the error (a flag and
    its value, e.g. ``--model runs/x``; default the URL)."""
    found = find_export(url)
    if found is None:
        raise NoExport(f"{what or url}: no raymmr export there ({WEIGHTS}, or {EXPORT}/{WEIGHTS})")
    return found


def find_export(url: str) -> str | None:
    """The export a user points at: ``url`` itself when it holds model.safetensors, else its
    ``export/`` folder (a run directory). None when neither does."""
    url = normalize(url)
    for candidate in (url, join(url, EXPORT)):
        if exists(join(candidate, WEIGHTS)):
            return candidate
    return None
