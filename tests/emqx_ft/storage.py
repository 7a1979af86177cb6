"""Segment storage on disk, laid out as emqx_ft_storage_fs.erl lays it out.

``<root>/<escaped client id>/<escaped file id>/frags/MANIFEST.json`` holds
``["filemeta", 1, {...}]`` (encode_filemeta/1), ``.../frags/SEG.<Offset>.<Size>`` each
segment (mk_segment_filename/1); every file is written to ``.../tmp/<name>.<16 hex>``
and renamed into place (write_file_atomic/4, emqx_ft_fs_util.erl mk_temp_filename/1).
The pure state (ft.Transfer) is read back from these files, so a restarted front
keeps what EMQX would keep.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import time
from pathlib import Path

from tests.emqx_ft._erlang import escape_filename, jiffy_encode
from tests.emqx_ft.filemeta import FileMeta, FilemetaError, NotAnObjectError, decode
from tests.emqx_ft.ft import Transfer, clamp_segments_ttl

_SEGMENT = re.compile(r"SEG[.]([0-9]+)[.]([0-9]+)")  # break_segment_filename/1
_unique = itertools.count(1)


def temp_name(name: str) -> str:
    """emqx_ft_fs_util.erl mk_temp_filename/1: the first 200 characters, ".", and 16
    uppercase hex digits of a unique integer."""
    return f"{name[:200]}.{next(_unique) ^ (os.getpid() << 32):016X}"


def write_atomic(tmp_dir: Path, path: Path, content: bytes) -> None:
    """Write via a temp file and rename, as write_file_atomic/4 does (EMQX does not
    fsync; neither does this)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / temp_name(path.name)
    tmp.write_bytes(content)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, path)


def encode_manifest(meta: FileMeta, checksum: bytes | None = None) -> bytes:
    """``["filemeta", 1, Meta]`` (emqx_ft_storage_fs.erl and _exporter_fs.erl
    encode_filemeta/1, ?PRELUDE)."""
    return jiffy_encode(["filemeta", 1, meta.serializable(checksum)]).encode()


def decode_manifest(raw: bytes) -> FileMeta:
    """decode_filemeta/1: the prelude, then emqx_ft:decode_filemeta/1 of the map.
    Raises ValueError when it is corrupted (read_decode_file/2 says ``corrupted``)."""
    try:
        tag, vsn, body = json.loads(raw)
        if tag != "filemeta" or vsn != 1 or not isinstance(body, dict):
            raise ValueError("not a filemeta manifest")
        return decode(json.dumps(body).encode())
    except (ValueError, TypeError, FilemetaError, NotAnObjectError) as e:
        raise ValueError(f"corrupted manifest: {e}") from e


class SegmentStorage:
    """emqx_ft_storage_fs for one node: ``root`` is ``storage.local.segments.root``."""

    def __init__(self, root: Path, *, min_ttl_s: int = 300, max_ttl_s: int = 86400) -> None:
        self.root = root
        # emqx_ft_schema.erl local_storage_segments_gc: minimum 5m, maximum 24h.
        self.min_ttl_s = min_ttl_s
        self.max_ttl_s = max_ttl_s

    def transfer_dir(self, client_id: str, file_id: str) -> Path:
        """mk_filedir/3 without subdirs."""
        return self.root / escape_filename(client_id) / escape_filename(file_id)

    def _frags(self, client_id: str, file_id: str) -> Path:
        return self.transfer_dir(client_id, file_id) / "frags"

    def _tmp(self, client_id: str, file_id: str) -> Path:
        return self.transfer_dir(client_id, file_id) / "tmp"

    def load(self, client_id: str, file_id: str) -> Transfer:
        """The transfer as storage holds it (list/3 of fragments)."""
        frags = self._frags(client_id, file_id)
        meta: FileMeta | None = None
        segments: set[tuple[int, int]] = set()
        try:
            names = [p.name for p in frags.iterdir()]
        except FileNotFoundError:
            names = []
        for name in names:
            if name == "MANIFEST.json":
                try:
                    meta = decode_manifest((frags / name).read_bytes())
                except (ValueError, OSError):
                    meta = None  # store_filemeta/3 overwrites a corrupted one
            elif m := _SEGMENT.fullmatch(name):
                segments.add((int(m[1]), int(m[2])))
        return Transfer(client_id, file_id, meta, frozenset(segments))

    def store_filemeta(self, client_id: str, file_id: str, meta: FileMeta) -> None:
        """Write the manifest (the decision is ft.on_init's)."""
        path = self._frags(client_id, file_id) / "MANIFEST.json"
        write_atomic(self._tmp(client_id, file_id), path, encode_manifest(meta))

    def touch_filemeta(self, client_id: str, file_id: str) -> None:
        """store_filemeta/3 touches the manifest when the same init comes again."""
        path = self._frags(client_id, file_id) / "MANIFEST.json"
        os.utime(path)

    def store_segment(self, client_id: str, file_id: str, offset: int, content: bytes) -> None:
        """store_segment/3: ``SEG.<Offset>.<Size>``, replaced when sent again."""
        path = self._frags(client_id, file_id) / f"SEG.{offset}.{len(content)}"
        write_atomic(self._tmp(client_id, file_id), path, content)

    def segment_path(self, client_id: str, file_id: str, offset: int, size: int) -> Path:
        """Where a stored segment is (pread/5 reads it)."""
        return self._frags(client_id, file_id) / f"SEG.{offset}.{size}"

    def collect(self, client_id: str, file_id: str) -> None:
        """emqx_ft_storage_fs_gc.erl collect/3 after a successful export: fragments and
        temporary files go, with their folders."""
        shutil.rmtree(self.transfer_dir(client_id, file_id), ignore_errors=True)

    def gc(self, now: float | None = None) -> int:
        """One GC pass (emqx_ft_storage_fs_gc.erl try_collect_transfer/4): fragments and
        temp files older than the transfer's clamped segments_ttl are deleted, then the
        emptied transfer folder. Returns the number of files deleted."""
        now = time.time() if now is None else now
        deleted = 0
        for client_dir in self.root.glob("*"):
            for transfer_dir in client_dir.glob("*"):
                meta = None
                manifest = transfer_dir / "frags" / "MANIFEST.json"
                try:
                    meta = decode_manifest(manifest.read_bytes())
                except (ValueError, OSError):
                    meta = None
                ttl = clamp_segments_ttl(
                    meta.segments_ttl if meta else None, self.min_ttl_s, self.max_ttl_s
                )
                for sub in ("frags", "tmp"):
                    for f in (transfer_dir / sub).glob("*"):
                        if f.stat().st_mtime < now - ttl:
                            f.unlink(missing_ok=True)
                            deleted += 1
                for sub in ("frags", "tmp", ""):
                    with contextlib.suppress(OSError):
                        (transfer_dir / sub).rmdir()
        return deleted
