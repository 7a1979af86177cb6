"""The two exporters of emqx_ft: local folder and S3.

Both are fed the assembled bytes in coverage order and finish with the checksum
check of emqx_ft_storage_exporter.erl complete/2 (see ft.export_checksum).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.emqx_ft._erlang import escape_filename, transfer_hash_hex
from tests.emqx_ft.filemeta import FileMeta
from tests.emqx_ft.ft import Error, Ok, Result, export_checksum
from tests.emqx_ft.storage import encode_manifest, temp_name

log = logging.getLogger(__name__)

# S3 limits user-defined metadata to 2 KB: "the sum of the number of bytes in the UTF-8
# encoding of each key and value" (AWS S3 user guide, "Working with object metadata").
# moto does not enforce it, so the S3 exporter refuses as S3 would (MetadataTooLarge,
# HTTP 400); EMQX then gets {error, {http_error, 400, ...}} from erlcloud, which
# emqx_ft_error.erl format/1 describes as internal_error. Keys are counted without the
# "x-amz-meta-" prefix, as the guide's example does.
S3_USER_METADATA_LIMIT = 2048
S3_MIN_PART_SIZE = 5 * 1024 * 1024  # emqx_s3_upload.erl ?DEFAULT_MIN_PART_SIZE


class Exporter(Protocol):
    """emqx_ft_storage_exporter's behaviour, collapsed to one call."""

    def export(
        self,
        client_id: str,
        file_id: str,
        meta: FileMeta,
        chunks: Iterable[bytes],
        fin_checksum: bytes | None,
    ) -> Result:
        """Write the file; Ok or the EMQX error the export ends with."""
        ...

    def exported(self, client_id: str, file_id: str) -> bool:
        """emqx_ft_storage_fs.erl check_if_already_exported/2 (list with a transfer)."""
        ...


def local_result_dir(root: Path, client_id: str, file_id: str) -> Path:
    """emqx_ft_storage_exporter_fs.erl mk_result_reldir/1 under the exports root."""
    h = transfer_hash_hex(client_id, file_id)
    return root / h[:2] / h[2:4] / h[4:] / escape_filename(client_id) / escape_filename(file_id)


class LocalExporter:
    """emqx_ft_storage_exporter_fs: data to ``<root>/tmp/<temp name>``, then the manifest
    ``<name>.MANIFEST.json`` (written directly, its failure only logged: complete/2),
    then the data renamed to ``<result dir>/<name>``. The manifest's filemeta carries
    the checksum (``FilemetaIn#{checksum => Checksum}``), computed when none was given."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def export(
        self,
        client_id: str,
        file_id: str,
        meta: FileMeta,
        chunks: Iterable[bytes],
        fin_checksum: bytes | None,
    ) -> Result:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / temp_name(meta.name)
        digest = hashlib.sha256()
        try:
            with tmp.open("wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
            actual = digest.digest()
            checked = export_checksum(meta, fin_checksum, actual)
            if isinstance(checked, Error):
                tmp.unlink(missing_ok=True)  # discard/1
                return checked
            result = local_result_dir(self.root, client_id, file_id) / meta.name
            result.parent.mkdir(parents=True, exist_ok=True)
            manifest = result.with_name(meta.name + ".MANIFEST.json")
            try:
                manifest.write_bytes(encode_manifest(meta, checksum=actual))
            except OSError as e:
                log.warning("filemeta_write_failed %s: %s", manifest, e)
            tmp.rename(result)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            return Error(e.strerror.lower().replace(" ", "_") if e.strerror else "internal_error")
        return Ok()

    def exported(self, client_id: str, file_id: str) -> bool:
        folder = local_result_dir(self.root, client_id, file_id)
        # list_local_transfer/2 with filter_manifest/1: any regular file not a manifest.
        return any(p.is_file() and not p.name.endswith(".MANIFEST.json") for p in folder.glob("*"))


def s3_key(client_id: str, file_id: str, name: str) -> str:
    """emqx_ft_storage_exporter_s3.erl s3_key/2: escaped client id / escaped file id /
    the name as given (is_filename_safe already keeps '/' out of it)."""
    return f"{s3_prefix(client_id, file_id)}/{name}"


def s3_prefix(client_id: str, file_id: str) -> str:
    """s3_prefix/1."""
    return f"{escape_filename(client_id)}/{escape_filename(file_id)}"


def s3_metadata(client_id: str, file_id: str, meta: FileMeta) -> dict[str, str]:
    """s3_headers/2 without the ``x-amz-meta-`` prefix (boto3 adds it): the filemeta
    as stored at init (no computed checksum, unlike the local manifest), encoded with
    ``[force_utf8, uescape]``; ``filemeta-vsn`` is ?FILEMETA_VSN."""
    return {
        "clientid": client_id,
        "fileid": file_id,
        "filemeta": meta.encode(uescape=True),
        "filemeta-vsn": "1",
    }


def user_metadata_size(metadata: dict[str, str]) -> int:
    """S3's measure of user-defined metadata (see S3_USER_METADATA_LIMIT)."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


@dataclass(frozen=True)
class S3Target:
    """Where the S3 exporter writes (``storage.local.exporter.s3``)."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


class S3Exporter:
    """emqx_ft_storage_exporter_s3 through boto3: buffered like emqx_s3_upload.erl, one
    PutObject when the file is under the minimum part size, else a multipart upload
    whose parts are flushed each time the buffer reaches it; aborted on error."""

    def __init__(self, target: S3Target, *, min_part_size: int = S3_MIN_PART_SIZE) -> None:
        import boto3  # only the S3 exporter needs it

        self.target = target
        self.min_part_size = min_part_size
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=target.endpoint,
            aws_access_key_id=target.access_key,
            aws_secret_access_key=target.secret_key,
            region_name=target.region,
        )

    def export(
        self,
        client_id: str,
        file_id: str,
        meta: FileMeta,
        chunks: Iterable[bytes],
        fin_checksum: bytes | None,
    ) -> Result:
        key = s3_key(client_id, file_id, meta.name)
        metadata = s3_metadata(client_id, file_id, meta)
        if user_metadata_size(metadata) > S3_USER_METADATA_LIMIT:
            log.error(
                "s3 export of %s refused: user metadata is %d bytes, S3 takes %d (MetadataTooLarge)",
                key,
                user_metadata_size(metadata),
                S3_USER_METADATA_LIMIT,
            )
            return Error("internal_error", "MetadataTooLarge")
        bucket = self.target.bucket
        digest = hashlib.sha256()
        buffer: list[bytes] = []
        buffered = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        def upload_part(upload_id: str, body: bytes) -> None:
            n = len(parts) + 1
            etag = self.client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=body
            )["ETag"]
            parts.append({"PartNumber": n, "ETag": etag})

        try:
            for chunk in chunks:
                digest.update(chunk)
                buffer.append(chunk)
                buffered += len(chunk)
                if buffered >= self.min_part_size:
                    if upload_id is None:
                        upload_id = self.client.create_multipart_upload(
                            Bucket=bucket, Key=key, Metadata=metadata
                        )["UploadId"]
                    upload_part(upload_id, b"".join(buffer))
                    buffer, buffered = [], 0
            checked = export_checksum(meta, fin_checksum, digest.digest())
            if isinstance(checked, Error):
                if upload_id is not None:
                    self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                return checked
            if upload_id is None:
                self.client.put_object(
                    Bucket=bucket, Key=key, Body=b"".join(buffer), Metadata=metadata
                )
            else:
                if buffer:
                    upload_part(upload_id, b"".join(buffer))
                self.client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except Exception as e:  # noqa: BLE001 - botocore's errors: EMQX sees {error, {http_error, ...}}
            log.error("s3 export of %s failed: %s", key, e)
            return Error("internal_error", str(e))
        return Ok()

    def exported(self, client_id: str, file_id: str) -> bool:
        listed = self.client.list_objects(
            Bucket=self.target.bucket, Prefix=s3_prefix(client_id, file_id), MaxKeys=500
        )
        # parse_transfer_and_name/1 keeps keys of exactly three levels.
        return any(o["Key"].count("/") == 2 for o in listed.get("Contents", []))
