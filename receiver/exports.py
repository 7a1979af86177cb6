"""Reading what a stock EMQX exported: its local exporter folder and its S3 bucket.

EMQX assembles an uploaded file and hands it to one exporter; nothing of the
transfer reaches an MQTT subscriber (emqx_ft.erl ``on_message_publish`` marks
every ``$file…`` message ``allow_publish => false``). The two layouts, as
EMQX's source defines them (read from apps/emqx_ft/src; cited per behaviour):

Local (emqx_ft_storage_exporter_fs.erl)
    ``<root>/<B1>/<B2>/<Rest>/<escaped client id>/<escaped file id>/<name>``
    (``mk_result_reldir``), where ``B1 B2 Rest`` is the upper-case hex
    (``binary:encode_hex``) of SHA-1 over ``term_to_binary({ClientId, FileId})``
    split 2 / 2 / 36 (``mk_transfer_hash``, ``BUCKET1_LEN``, ``BUCKET2_LEN``),
    plus ``<name>.MANIFEST.json`` = JSON ``["filemeta", 1, {filemeta}]``
    (``encode_filemeta``, ``PRELUDE``). ``complete`` writes the manifest
    first, then renames the assembled file from ``<root>/tmp/`` into place
    (``TEMPDIR``, ``mk_temp_absfilepath``): a manifest may stand alone for a
    moment, and a file counts only once both are there (``filter_manifest``
    skips the manifests; ``list_local`` globs exactly six levels).
S3 (emqx_ft_storage_exporter_s3.erl)
    key ``<escaped client id>/<escaped file id>/<name>`` (``s3_key``,
    ``s3_prefix``; ``parse_transfer_and_name`` reads exactly three parts back),
    user metadata ``x-amz-meta-clientid``, ``-fileid``, ``-filemeta`` (the
    filemeta JSON with non-ASCII \\u-escaped: ``s3_header_filemeta``) and
    ``-filemeta-vsn`` = ``1`` (``s3_headers``, ``FILEMETA_VSN``). The object
    appears only when its upload completes (``emqx_s3_uploader:complete``).

Names are escaped by emqx_ft_fs_util.erl ``escape_filename``: ``%``, ``:``,
``\\``, ``/`` and unprintable characters become ``%XX`` per UTF-8 byte
(upper-case hex), ``.`` and ``..`` are escaped whole. The filemeta's
``checksum`` is upper-case hex (emqx_ft_schema.erl ``converter(checksum)``
uses ``binary:encode_hex``).

Each source lists ``Listing`` values (cheap: no object is read), describes a
listing as an ``Export`` (reads its manifest or metadata; None while a
manifest is still being written) and opens its bytes as a stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hashing.errors import ConfigError, InputError, TransientError

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".MANIFEST.json"  # emqx_ft_storage_exporter_fs.erl MANIFEST
TEMP_DIR = "tmp"  # emqx_ft_storage_exporter_fs.erl TEMPDIR
FILEMETA_VSN = "1"  # emqx_ft_storage_exporter_s3.erl FILEMETA_VSN
MAX_MANIFEST_BYTES = 1 << 20  # a filemeta is a few hundred bytes; user_data is any JSON
_HEX = frozenset("0123456789abcdefABCDEF")
CHUNK = 1 << 20  # streaming reads (docs/testing.md: 1 MiB reads hash fastest here)


# -- emqx_ft_fs_util.erl: escape_filename / unescape_filename ----------------------


def _printable(c: int) -> bool:
    # emqx_ft_fs_util.erl IS_PRINTABLE (after io_lib:printable_unicode_list/1).
    return 32 <= c <= 126 or 0xA0 <= c < 0xD800 or 0xDFFF < c < 0xFFFE or 0xFFFF < c <= 0x10FFFF


def escape_filename(name: str) -> str:
    """A client id or file id as EMQX names its folder or key part (``escape_filename``)."""
    if name in (".", ".."):
        return "".join(f"%{b:02X}" for b in name.encode())
    out = []
    for ch in name:
        if ch in "%:\\/" or not _printable(ord(ch)):
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


def unescape_filename(name: str) -> str:
    """The inverse (``unescape_filename``): ``%XX`` is a byte, anything else its UTF-8.

    Raises InputError for a ``%`` not followed by two hex digits or bytes that
    are not UTF-8 (EMQX itself fails on the first with ``badarg``).
    """
    out = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "%" and len(name) - i >= 3:
            pair = name[i + 1 : i + 3]
            if not all(c in _HEX for c in pair):
                raise InputError(f"{name!r}: bad escape at {i}")
            out.append(int(pair, 16))
            i += 3
            continue
        out += name[i].encode()
        i += 1
    try:
        return out.decode()
    except UnicodeDecodeError as e:
        raise InputError(f"{name!r} does not unescape to UTF-8") from e


def _term_binary(data: bytes) -> bytes:
    # External term format: BINARY_EXT (109), 4-byte big-endian length, the bytes.
    return b"m" + struct.pack(">I", len(data)) + data


def transfer_reldir(client_id: str, file_id: str) -> tuple[str, ...]:
    """The five folder levels of a transfer under the export root (``mk_result_reldir``).

    SHA-1 (``BUCKET_HASH``) over ``term_to_binary({ClientId, FileId})``: version
    131, SMALL_TUPLE_EXT (104) of arity 2, then the two binaries.
    """
    term = b"\x83h\x02" + _term_binary(client_id.encode()) + _term_binary(file_id.encode())
    digest = hashlib.sha1(term, usedforsecurity=False).hexdigest().upper()
    return (
        digest[:2],
        digest[2:4],
        digest[4:],
        escape_filename(client_id),
        escape_filename(file_id),
    )


# -- what a source yields ------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One exported object as listed: where it is, and how to tell if it changed."""

    source: str  # "fs" | "s3"
    key: str  # path under the export root, or the S3 key
    fingerprint: str  # size and mtime (fs), size and ETag (s3)
    size: int
    client_id: str  # unescaped
    file_id: str  # unescaped
    name: str


@dataclass(frozen=True)
class Export:
    """A listing with the filemeta EMQX recorded for it (decoded, and as stored)."""

    listing: Listing
    filemeta: Mapping[str, Any]
    filemeta_raw: bytes


class Stream(Protocol):
    """An open exported object: read into a buffer until 0, then close."""

    def readinto(self, buffer: memoryview) -> int:
        """Fill up to ``len(buffer)`` bytes; 0 at the end."""
        ...

    def close(self) -> None:
        """Release the file or the HTTP connection."""
        ...


class ExportSource(Protocol):
    """Where EMQX exports to: its local exporter folder or its S3 bucket."""

    name: str

    def listings(self, client_ids: Sequence[str]) -> Iterator[Listing]:
        """Every complete export of these client ids (or of all, when empty).

        Raises TransientError when the source cannot be read now."""
        ...

    def describe(self, listing: Listing) -> Export | None:
        """The export with its filemeta; None while the manifest is not (fully) written.

        Raises InputError when the filemeta is there but is not EMQX's."""
        ...

    def open(self, export: Export) -> Stream:
        """The exported bytes. Raises TransientError when they cannot be read now."""
        ...


def decode_manifest(data: bytes) -> Mapping[str, Any]:
    """``["filemeta", 1, {filemeta}]`` (emqx_ft_storage_exporter_fs.erl ``decode_filemeta``).

    Raises InputError otherwise."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"manifest is not JSON: {e}") from e
    if (
        not isinstance(value, list)
        or len(value) != 3
        or value[0] != "filemeta"
        or value[1] != 1
        or not isinstance(value[2], dict)
    ):
        raise InputError('manifest is not ["filemeta", 1, {...}]')
    return value[2]


# -- the local exporter ---------------------------------------------------------------


def _dirs(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if e.is_dir(follow_symlinks=False)), key=lambda e: e.name)
    except FileNotFoundError:
        return []


class LocalExports:
    """EMQX's local exporter folder (``storage.local.exporter.local.root``)."""

    name = "fs"

    def __init__(self, root: Path) -> None:
        self.root = root

    def listings(self, client_ids: Sequence[str]) -> Iterator[Listing]:
        """Walk ``root`` six levels deep as ``list_local`` globs it; ``tmp/`` is skipped."""
        wanted = set(client_ids)
        if not self.root.is_dir():
            if self.root.exists():
                raise TransientError(f"{self.root}: the export root is not a folder")
            return  # emqx_ft_storage_exporter_fs.erl read_exportinfo: no root is no error
        for b1 in _dirs(self.root):
            if b1.name == TEMP_DIR:
                continue  # assemblies in progress (mk_temp_absfilepath)
            for b2 in _dirs(Path(b1.path)):
                for rest in _dirs(Path(b2.path)):
                    for cid in _dirs(Path(rest.path)):
                        yield from self._transfer(Path(cid.path), wanted)

    def _transfer(self, cid_dir: Path, wanted: set[str]) -> Iterator[Listing]:
        try:
            client_id = unescape_filename(cid_dir.name)
        except InputError:
            log.warning("export folder %s: not an EMQX client id folder", cid_dir)
            return
        if wanted and client_id not in wanted:
            return
        for fid in _dirs(cid_dir):
            try:
                file_id = unescape_filename(fid.name)
            except InputError:
                log.warning("export folder %s: not an EMQX file id folder", fid.path)
                continue
            rel = Path(fid.path).relative_to(self.root)
            if tuple(rel.parts) != transfer_reldir(client_id, file_id):
                log.warning("%s is not where EMQX puts the export of %s; skipped", rel, client_id)
                continue
            try:
                with os.scandir(fid.path) as it:
                    files = sorted(e.name for e in it if e.is_file(follow_symlinks=False))
            except FileNotFoundError:
                continue
            names = set(files)
            for name in files:
                if name.endswith(MANIFEST_SUFFIX) or name + MANIFEST_SUFFIX not in names:
                    continue  # a manifest, or a file whose manifest is not there (yet)
                try:
                    st = (Path(fid.path) / name).lstat()
                except FileNotFoundError:
                    continue
                yield Listing(
                    self.name,
                    str(rel / name),
                    f"{st.st_size}:{st.st_mtime_ns}",
                    st.st_size,
                    client_id,
                    file_id,
                    name,
                )

    def describe(self, listing: Listing) -> Export | None:
        """Read ``<name>.MANIFEST.json``; None while it does not parse (still being written)."""
        path = self.root / (listing.key + MANIFEST_SUFFIX)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TransientError(f"{path}: {e.strerror}") from e
        if len(data) > MAX_MANIFEST_BYTES:
            raise InputError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            meta = decode_manifest(data)
        except InputError:
            # emqx_ft_storage_exporter_fs.erl complete: file:write_file, not atomic;
            # a manifest that does not parse yet is looked at again at the next poll.
            return None
        return Export(listing, meta, json.dumps(meta, separators=(",", ":")).encode())

    def open(self, export: Export) -> Stream:
        """The exported file, read-only, not following a symlink."""
        path = self.root / export.listing.key
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise TransientError(f"{path}: {e.strerror}") from e
        return os.fdopen(fd, "rb", buffering=0)


# -- the S3 exporter ---------------------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    """The bucket EMQX's S3 exporter writes to (``storage.local.exporter.s3``)."""

    endpoint: str  # e.g. https://minio.example:9000; empty: AWS's own for the region
    bucket: str
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = ""

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ConfigError("[receiver] s3_bucket is empty")
        if bool(self.access_key) != bool(self.secret_key):
            raise ConfigError("[receiver] s3_access_key_file and s3_secret_key_file go together")


class _BodyStream:
    """A botocore StreamingBody as a ``Stream``."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readinto(self, buffer: memoryview) -> int:
        data: bytes = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()


class S3Exports:
    """EMQX's S3 exporter bucket, through boto3 (MinIO, Ceph RGW, AWS: path-style URLs)."""

    name = "s3"

    def __init__(self, settings: S3Settings, client: Any | None = None) -> None:
        self.settings = settings
        if client is None:
            import boto3  # noqa: PLC0415 - only a platform reading S3 needs it loaded
            from botocore.config import Config  # noqa: PLC0415

            client = boto3.client(
                "s3",
                endpoint_url=settings.endpoint or None,
                region_name=settings.region or None,
                aws_access_key_id=settings.access_key or None,
                aws_secret_access_key=settings.secret_key or None,
                config=Config(
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                ),
            )
        self._s3 = client

    def _errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        return (BotoCoreError, ClientError)

    def listings(self, client_ids: Sequence[str]) -> Iterator[Listing]:
        """List by the key prefix of each client id (``s3_prefix``), or the whole bucket."""
        prefixes = [escape_filename(c) + "/" for c in client_ids] or [""]
        try:
            for prefix in prefixes:
                pages = self._s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.settings.bucket, Prefix=prefix
                )
                for page in pages:
                    for obj in page.get("Contents", []):
                        listing = self._listing(obj)
                        if listing is not None:
                            yield listing
        except self._errors() as e:
            raise TransientError(f"s3://{self.settings.bucket}: cannot list: {e}") from e

    def _listing(self, obj: Mapping[str, Any]) -> Listing | None:
        key = str(obj["Key"])
        parts = key.split("/")
        if len(parts) != 3:  # parse_transfer_and_name: exactly [ClientId, FileId, Name]
            return None
        try:
            client_id, file_id = unescape_filename(parts[0]), unescape_filename(parts[1])
        except InputError:
            return None
        etag = str(obj.get("ETag", "")).strip('"')
        size = int(obj["Size"])
        return Listing(self.name, key, f"{size}:{etag}", size, client_id, file_id, parts[2])

    def describe(self, listing: Listing) -> Export | None:
        """The filemeta from the object's user metadata (``s3_headers``)."""
        try:
            head = self._s3.head_object(Bucket=self.settings.bucket, Key=listing.key)
        except self._errors() as e:
            raise TransientError(f"s3://{self.settings.bucket}/{listing.key}: {e}") from e
        meta = {str(k).lower(): str(v) for k, v in head.get("Metadata", {}).items()}
        if meta.get("filemeta-vsn") != FILEMETA_VSN:
            raise InputError(
                f"object metadata filemeta-vsn is {meta.get('filemeta-vsn')!r}, not {FILEMETA_VSN!r}"
            )
        if meta.get("clientid") != listing.client_id or meta.get("fileid") != listing.file_id:
            raise InputError("object metadata clientid/fileid do not match its key")
        raw = meta.get("filemeta", "").encode()
        try:
            value = json.loads(raw)
        except ValueError as e:
            raise InputError(f"object metadata filemeta is not JSON: {e}") from e
        if not isinstance(value, dict):
            raise InputError("object metadata filemeta is not a JSON object")
        return Export(listing, value, raw)

    def open(self, export: Export) -> Stream:
        """The object's bytes, streamed (never held whole in memory)."""
        try:
            obj = self._s3.get_object(Bucket=self.settings.bucket, Key=export.listing.key)
        except self._errors() as e:
            raise TransientError(f"s3://{self.settings.bucket}/{export.listing.key}: {e}") from e
        return _BodyStream(obj["Body"])
