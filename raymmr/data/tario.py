"""Sequential tar reading for shards: fast, and strict about truncation; `read_tar` groups a shard's
members into samples.

``tarfile`` costs ~25 µs per member in Python bookkeeping, a tenth of a JPEG decode per sample,
and it treats a file that stops exactly at a header boundary as a normal end, which would hide
a truncated shard. Shards are plain uncompressed tars of small files, so ``iter_tar`` parses
their 512-byte headers directly (ustar names with prefix, PAX ``path``, GNU long names) and
insists on the end-of-archive block. Compressed tars (.tar.gz etc.) go through ``tarfile``
with the same end check.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
import time
import zlib
from collections.abc import Iterator

from raymmr import storage
from raymmr.data.schema import IMAGE_EXTS

logger = logging.getLogger("raymmr.data.tario")

KNOWN_EXTS = frozenset(IMAGE_EXTS + ("json", "txt"))

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular, contiguous file
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd


class _Reader:
    """Exact reads over a stream that may return short reads (pipes)."""

    def __init__(self, fileobj):
        self.f = fileobj

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) == n or not data:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            more = self.f.read(n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256 for sizes >= 8 GiB
        value = int.from_bytes(field[1:], "big")
        return -value if field[:1] == b"\xff" else value
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a PAX extended header ("%d path=...\\n" records)."""
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        pos += length
    return None


def iter_tar(fileobj) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the regular files of a tar stream, in order.

    Raises ``tarfile.ReadError`` naming the problem when the data ends early (also exactly at a
    header boundary) or a header is corrupt.
    """
    reader = _Reader(fileobj)
    header = reader.read(BLOCK)
    if any(header.startswith(magic) for magic in _COMPRESSED_MAGIC):
        yield from _iter_tarfile(io.BufferedReader(_Prefixed(header, fileobj)))
        return
    long_name: str | None = None
    while True:
        if len(header) < BLOCK:
            raise tarfile.ReadError("unexpected end of data: no end-of-archive block (truncated?)")
        if header == bytes(BLOCK):
            return  # end-of-archive block
        try:
            if _number(header[148:156]) not in tarfile.calc_chksums(header):  # (unsigned, signed) sums
                raise ValueError("bad checksum")
            size = _number(header[124:136])
        except ValueError as e:
            raise tarfile.ReadError(f"corrupt tar header ({e})") from None
        kind = header[156:157]
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        data = reader.read(padded)
        if len(data) < padded:
            raise tarfile.ReadError(f"unexpected end of data inside a {size}-byte member")
        data = data[:size]
        if kind in (b"x", b"L"):  # PAX / GNU long name: applies to the next header
            try:
                long_name = _pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            except ValueError:
                raise tarfile.ReadError("corrupt PAX extended header") from None
        elif kind in _REGULAR:
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            yield (long_name or name), data
            long_name = None
        elif kind != b"g":  # directories, links, ...: skipped; a global PAX header changes nothing here
            long_name = None
        header = reader.read(BLOCK)


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read (to sniff compression)."""

    def __init__(self, head: bytes, rest):
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.head:
            n = min(len(buf), len(self.head))
            buf[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.rest.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _EndCheckedTarInfo(tarfile.TarInfo):
    """Marks the archive when its end-of-archive block is read (tarfile does not tell)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.raymmr_clean_end = True
            raise


def _iter_tarfile(fileobj) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_EndCheckedTarInfo) as tar:
        for info in tar:
            if info.isreg():
                yield info.name, tar.extractfile(info).read()
            tar.members = []  # stream mode keeps every TarInfo otherwise: memory grows with the shard
        if not getattr(tar, "raymmr_clean_end", False):
            raise tarfile.ReadError("unexpected end of data: no end-of-archive block (truncated?)")


# --------------------------------------------------------------------------- samples of a shard


class Problems:
    """One consumer's skip counter, its count of transient read errors retried (apart: nothing of
    those is lost) and the shards it already warned about."""

    def __init__(self):
        self.skipped = 0
        self.retried = 0
        self._warned: set[str] = set()

    def retry(self, url: str, error: BaseException, attempt: int, wait: float) -> None:
        self.retried += 1
        logger.warning("shard %s: read error (%s: %s); reading it again from the sample reached, retry %d of %d "
                       "in %.1f s", url, type(error).__name__, error, attempt, len(READ_RETRY_WAITS_S), wait)

    def skip(self, url: str, member: str, reason: str, n: int = 1) -> None:
        self.skipped += n
        if url not in self._warned:
            self._warned.add(url)
            logger.warning("shard %s: skipping %s: %s (later problems in this shard are only counted)", url, member, reason)

    def take(self) -> int:
        n, self.skipped = self.skipped, 0
        return n


def _key_ext(name: str) -> tuple[str, str]:
    """'dir/abc.seg.jpg' -> ('dir/abc', 'seg.jpg'): the key ends at the basename's first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


READ_RETRY_WAITS_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # before each new attempt at a shard after a transient error
# Errors of the store that reading again cannot fix: the shard is not there, or not for us.
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class ShardReadError(OSError):
    """A shard that kept failing to read after every retry (the store, not the data): the worker
    fails and the run continues from its checkpoint, instead of losing the samples silently."""


def retried(url: str, error: BaseException) -> bool:
    """Whether ``read_tar`` reads the shard again after ``error``: a transient read error of the
    store (network, throttling, a reset connection: an ``OSError`` but a missing or forbidden
    shard), as opposed to a corrupt or truncated archive (the same every time). Not for a ``pipe:``
    command, whose exit status is its own verdict (aws, gsutil and curl retry by themselves): a
    failed pipe shard is skipped and counted, as a missing one."""
    return isinstance(error, OSError) and not isinstance(error, PERMANENT_OS_ERRORS) and storage.scheme(url) != "pipe"


def read_tar(url: str, problems: Problems, expected: int | None = None, stream=None, *,
             sleep=time.sleep) -> Iterator[dict]:
    """Samples of one shard as {"__key__", "__url__", ext: bytes}, known extensions only.
    ``stream``: the shard already opened (read from it instead of opening ``url``; closed here too).

    A transient read error (``retried``) reads the shard again from its start, skipping the
    samples already given, after a wait (``READ_RETRY_WAITS_S``), counted in ``problems.retried``;
    when every retry fails, ``ShardReadError`` is raised (no sample is dropped silently: the run
    restarts from its checkpoint). A corrupt or truncated archive ends the shard: the sample being
    read is lost, and so are the rest when the manifest says how many the shard holds; all of them
    are counted as skipped. A missing shard, or a ``pipe:`` command that fails, is skipped whole.
    """
    given = 0  # samples yielded so far, across attempts
    for attempt in range(len(READ_RETRY_WAITS_S) + 1):
        try:
            for i, sample in enumerate(_read_tar_once(url, problems, expected, stream if attempt == 0 else None)):
                if i >= given:
                    given += 1
                    yield sample
            return
        except OSError as e:
            if not retried(url, e):
                raise
            if attempt == len(READ_RETRY_WAITS_S):
                raise ShardReadError(f"shard {url}: still failing after {attempt} retries: {type(e).__name__}: {e}") from e
            wait = READ_RETRY_WAITS_S[attempt]
            problems.retry(url, e, attempt + 1, wait)
            sleep(wait)


def _read_tar_once(url: str, problems: Problems, expected: int | None = None, stream=None) -> Iterator[dict]:
    """One pass over the shard (``read_tar``); a transient read error propagates."""
    current: dict | None = None
    yielded, member = 0, "(start of file)"
    try:
        stream = stream if stream is not None else storage.open_url(url)
    except OSError as e:
        if retried(url, e):
            raise
        problems.skip(url, "(whole shard)", f"cannot open: {e}", n=expected or 1)
        return
    try:
        for member, data in iter_tar(stream):
            key, ext = _key_ext(member)
            if ext not in KNOWN_EXTS:
                continue
            if current is not None and current["__key__"] != key:
                yield current
                yielded += 1
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            current[ext] = data
        if current is not None:
            yield current
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        if retried(url, e):
            raise
        lost = max(1, expected - yielded) if expected else 1
        problems.skip(url, member, f"truncated or corrupt tar ({type(e).__name__}: {e}); {lost} sample(s) lost", n=lost)
    finally:
        with contextlib.suppress(OSError):  # a failed pipe: (aws/curl) reports its exit status here
            stream.close()


# --------------------------------------------------------------------------- foreign sets
# A shard set another tool wrote (img2dataset) keeps its text where that tool put it; the
# manifest's ``fields`` (written by ``raymmr.data.making.foreign.index_shards``) say where.

FIELDS = ("caption", "domain", "modality", "organ")
DEFAULT_FIELDS = {"caption": "txt"}



def _text(raw: dict, where: str) -> str:
    if where == "txt":
        value = raw.get("txt", b"").decode("utf-8", "replace")
    else:
        if "json" not in raw:
            return ""
        try:
            meta = json.loads(raw["json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"malformed JSON ({e})") from None
        value = meta.get(where[5:]) if isinstance(meta, dict) else None
        value = "" if value is None or isinstance(value, (dict, list)) else str(value)
    return " ".join(value.split())


def foreign_record(raw: dict, fields: dict[str, str], split: str = "") -> dict:
    """A raymmr record (a caption sample) from a foreign sample's members, per ``fields``.
    Raises ValueError naming what is missing."""
    caption = _text(raw, fields["caption"])
    if not caption:
        source = ".txt member" if fields["caption"] == "txt" else f"JSON field {fields['caption'][5:]!r}"
        raise ValueError(f"no caption (the manifest's fields read it from the {source})")
    record = {"key": raw["__key__"], "kind": "caption", "caption": caption, "question": "", "answer": "",
              "answer_type": "", "question_type": "", "organ": "", "modality": "", "domain": "", "split": split,
              "source": "foreign", "extra": {}}  # fmt: skip
    for name in FIELDS[1:]:
        if name in fields:
            record[name] = _text(raw, fields[name])
    return record
