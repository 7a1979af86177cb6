"""Media probe (design.md step 3): what a recording is, and whether it plays to its end.

``probe`` reads a copied recording with OpenCV (video, photos) or the standard
library (WAV) and returns ``MediaFacts`` for the ``ingest`` entry: duration,
frame rate (as an integer, fps x 1000: entries hold no floats), frame count,
picture size, codec, and whether the media decodes to its *end*, so a clip cut off by
a pulled card or a dying battery is kept and flagged, never rejected
(regulation Art. 20 (5)). It can write a JPEG thumbnail for the kiosk.

Recordings are input from outside (style.md 6), possibly hostile. ``probe``
never raises for bad media; files it cannot read are facts too
(``decodes=False`` and a ``problem``). The defences:

- FFmpeg (inside OpenCV) may open only local files and only the demuxers of
  real recording containers (``OPENCV_FFMPEG_CAPTURE_OPTIONS``), so a "clip"
  that is an HLS playlist or a concat script cannot make the dock read other
  files or the network; OpenCV's image-sequence backend (which expands ``%d``
  in names) is never used.
- Photos are decompression bombs waiting to happen: a 100 KB PNG can claim
  50,000 x 50,000 pixels (7.5 GB decoded). The size is read from the header
  first and anything over ``ProbeLimits.photo_pixels`` is not decoded;
  ``OPENCV_IO_MAX_IMAGE_PIXELS`` is set to the same limit as a second fence
  (it only takes effect if this module is imported before cv2 is).
- The work is bounded: the end of a clip is checked by seeking to its last
  frames, not by decoding it all; a sequential read (when OpenCV cannot seek
  in a container, e.g. MPEG-TS) stops at ``ProbeLimits.read_frames`` or
  ``read_seconds``.
- Memory-safety bugs in a decoder and endless loops cannot be caught in
  Python: ``probe_isolated`` runs the probe in a child process under a memory
  limit and a timeout, so a crafted file costs one probe, not the daemon.

What ``decodes`` cannot tell: damage in the middle of a clip that the decoder
conceals (it proves frames exist to the end, not that each is clean), and a
cut at the end of an MPEG-TS, which has no index: its length is estimated from
what is there, so a cut TS reads as a shorter whole clip.

Kinds come from the original file name's extension (``agent.offload._kinds``); a name
with no known extension (and the store's extensionless paths) is classified by
the file's leading bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import queue
import resource
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agent.offload._kinds import AUDIO, OTHER, PHOTO, VIDEO, extension, kind_of
from hashing._fsutil import fsync_dir

log = logging.getLogger(__name__)

# Demuxers of the containers recorders write. Each FFmpeg demuxer name is a
# comma-separated list; one shared name lets it through.
_FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,avi,matroska,webm,mpegts,mpeg,flv,asf"
MAX_PHOTO_PIXELS = 100_000_000  # 100 MP: above any recorder's sensor; 300 MB decoded

# Must be set before cv2 is imported (OpenCV reads some at load time). An
# operator's own settings win; see the module docstring for why each is here.
_ENV_DEFAULTS = {
    "OPENCV_FFMPEG_CAPTURE_OPTIONS": f"protocol_whitelist;file|format_whitelist;{_FORMAT_WHITELIST}",
    "OPENCV_IO_MAX_IMAGE_PIXELS": str(MAX_PHOTO_PIXELS),
    "OPENCV_FFMPEG_LOGLEVEL": "-8",  # AV_LOG_QUIET: a damaged clip is a fact, not log noise
    "OPENCV_LOG_LEVEL": "ERROR",
}
_OPERATOR_LOG_LEVEL = "OPENCV_LOG_LEVEL" in os.environ
for _key, _value in _ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

import cv2  # noqa: E402 - after the environment above
import numpy as np  # noqa: E402

if not _OPERATOR_LOG_LEVEL:  # cv2 may have been imported before us; its level is global anyway
    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

DECODER = f"opencv {cv2.__version__}"
THUMB_WIDTH = 320
THUMB_AT_S = 1  # a frame this far in shows the scene better than the first, often black, frame
TAIL_FRAMES = 8  # frames decoded at the end of a clip to prove it is all there
# Frames a clip may fall short of its container's count and still count as
# whole: containers without an index (MPEG-TS) estimate the count from the bitrate.
SLACK_FRAMES = 2
_MAX_INT = 2**53 - 1
_MAX_PROBLEM = 300  # characters


@dataclass(frozen=True)
class ProbeLimits:
    read_frames: int = 15_000  # sequential read bound (about 8 min at 30 fps)
    read_seconds: float = 60.0  # wall-clock bound on decoding per probe
    photo_bytes: int = 64 << 20
    photo_pixels: int = MAX_PHOTO_PIXELS


DEFAULT_LIMITS = ProbeLimits()


@dataclass(frozen=True)
class MediaFacts:
    """What the probe found. ``as_body()`` is what the ledger keeps.

    ``decodes``: True = decoded to the end; False = it does not (or could not
    be verified within the limits; ``problem`` says which); None = not checked,
    because the dock has no decoder for this kind (compressed audio other than
    WAV) or it is not media at all (``kind == "other"``).
    Counts and sizes are the container's own claims, also for a clip that
    stops early (``problem`` says where it stops).
    """

    kind: str  # "video" | "audio" | "photo" | "other"
    decodes: bool | None
    duration_ms: int | None = None
    fps_milli: int | None = None  # frames per second x 1000
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    codec: str | None = None  # FourCC ("h264", "MJPG"), "jpeg"/"png", WAV format tag
    problem: str | None = None
    # What judged it, for an auditor re-checking: "opencv 4.10.0", "wave", "riff".
    decoder: str | None = None
    thumbnail: Path | None = None  # written thumbnail; dock-side state, not in the body

    @property
    def fps(self) -> float | None:
        """Frames per second, for display only."""
        return None if self.fps_milli is None else self.fps_milli / 1000

    def as_body(self) -> dict[str, Any]:
        """Strings, integers, booleans and null only (canonical JSON)."""
        return {
            "kind": self.kind,
            "decodes": self.decodes,
            "duration_ms": self.duration_ms,
            "fps_milli": self.fps_milli,
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "codec": self.codec,
            "problem": self.problem,
            "decoder": self.decoder,
        }


def probe(
    path: Path,
    thumb_out: Path | None = None,
    *,
    name: str | None = None,
    limits: ProbeLimits = DEFAULT_LIMITS,
) -> MediaFacts:
    """Probe one file; write a thumbnail to ``thumb_out`` (0600, atomically) if given.

    ``name`` is the recording's original file name (the kind is decided by its
    extension); default ``path.name``. Never raises for bad media or an
    unwritable thumbnail; a missing or unreadable ``path`` is a ``problem`` too.
    """
    kind, fmt = kind_of(name or path.name), ""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            kind, _ = _classify(name or path.name, b"")
            return _failed(kind, "not a regular file")
        head = _head(path)
        kind, fmt = _classify(name or path.name, head)
        if st.st_size == 0:
            return _failed(kind, "empty file (0 bytes)")
        if kind == VIDEO:
            return _probe_video(path, thumb_out, limits)
        if kind == PHOTO:
            return _probe_photo(path, st.st_size, thumb_out, limits)
        if kind == AUDIO:
            return _probe_audio(path, fmt, head, st.st_size)
        return MediaFacts(OTHER, None)
    except Exception as e:  # noqa: BLE001 - error boundary: one bad file never stops a session (style.md 9)
        log.warning("probe %s: %s: %s", path, type(e).__name__, e)
        return _failed(kind, f"probe failed: {type(e).__name__}: {e}")


# --- kinds -----------------------------------------------------------------------


def _head(path: Path, size: int = 1024) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


def _classify(name: str, head: bytes) -> tuple[str, str]:
    """(kind, format): by a known extension, else by the leading bytes."""
    kind = kind_of(name)
    if kind != OTHER:
        return kind, extension(name)
    return _sniff(head)


def _sniff(head: bytes) -> tuple[str, str]:
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return (AUDIO, "m4a") if brand in (b"M4A ", b"M4B ") else (VIDEO, "mp4")
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return VIDEO, "mov"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return VIDEO, "avi"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return AUDIO, "wav"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return VIDEO, "mkv"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return VIDEO, "ts"
    if head[:4] == b"\x00\x00\x01\xba":
        return VIDEO, "mpg"
    if head[:3] == b"\xff\xd8\xff":
        return PHOTO, "jpg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return PHOTO, "png"
    if head[:5] == b"#!AMR":
        return AUDIO, "amr"
    if head[:3] == b"ID3":
        return AUDIO, "mp3"
    if head[:4] == b"OggS":
        return AUDIO, "ogg"
    if head[:4] == b"fLaC":
        return AUDIO, "flac"
    return OTHER, ""


def _failed(kind: str, problem: str, **known: Any) -> MediaFacts:
    return MediaFacts(kind, None if kind == OTHER else False, problem=_clean(problem), **known)


def _clean(text: str) -> str:
    """A problem text: printable, no lone surrogates, bounded."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= _MAX_PROBLEM else text[: _MAX_PROBLEM - 1] + "…"


# --- video -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Stream:
    fps: float | None
    frames: int | None
    width: int | None
    height: int | None
    codec: str | None

    def facts(self, decodes: bool, problem: str | None, thumbnail: Path | None) -> MediaFacts:
        duration = None
        if self.fps and self.frames is not None:
            duration = round(self.frames * 1000 / self.fps)
        return MediaFacts(
            VIDEO,
            decodes,
            duration_ms=duration if duration is not None and duration <= _MAX_INT else None,
            fps_milli=round(self.fps * 1000) if self.fps else None,
            frames=self.frames,
            width=self.width,
            height=self.height,
            codec=self.codec,
            problem=None if problem is None else _clean(problem),
            decoder=DECODER,
            thumbnail=thumbnail,
        )


def _open(path: Path) -> Any:
    """A capture on FFmpeg only (never the image-sequence backend), or None."""
    # An absolute path: FFmpeg reads "name:..." as a protocol.
    cap = cv2.VideoCapture(str(path.absolute()), cv2.CAP_FFMPEG)
    if cap.isOpened():
        return cap
    cap.release()
    return None


def _stream(cap: Any) -> _Stream:
    """The container's claims, each dropped (None) when it is not plausible."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    width = cap.get(cv2.CAP_PROP_FRAME_WIDTH)
    height = cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    return _Stream(
        fps=fps if math.isfinite(fps) and 0 < fps <= 1000 else None,
        frames=int(frames) if math.isfinite(frames) and 0 < frames < 2**31 else None,
        width=int(width) if math.isfinite(width) and 0 < width <= 65536 else None,
        height=int(height) if math.isfinite(height) and 0 < height <= 65536 else None,
        codec=_fourcc(cap.get(cv2.CAP_PROP_FOURCC)),
    )


def _fourcc(value: float) -> str | None:
    if not math.isfinite(value) or value <= 0 or value >= 2**32:
        return None
    raw = int(value).to_bytes(4, "little")
    text = "".join(chr(b) for b in raw if 0x20 < b < 0x7F)  # printable ASCII only
    return text or f"0x{int(value):08x}"


def _probe_video(path: Path, thumb_out: Path | None, limits: ProbeLimits) -> MediaFacts:
    deadline = time.monotonic() + limits.read_seconds
    cap = _open(path)
    if cap is None:
        return _failed(
            VIDEO,
            "cannot be opened as a video: not a video, damaged, or cut off before its index "
            "(an MP4 without its moov atom)",
            decoder=DECODER,
        )
    try:
        info = _stream(cap)
        ok, frame = cap.read()
        if not ok or frame is None:
            return info.facts(False, "the container opens but no frame decodes", None)
        if thumb_out is not None and _seek_for_thumbnail(cap, info):
            ok, later = cap.read()
            if ok and later is not None:
                frame = later
        decodes, problem = _check_end(cap, path, info, limits, deadline)
    finally:
        cap.release()
    thumbnail = _write_thumbnail(frame, thumb_out) if thumb_out is not None else None
    return info.facts(decodes, problem, thumbnail)


def _seek_for_thumbnail(cap: Any, info: _Stream) -> bool:
    if not (info.fps and info.frames and info.frames > info.fps * THUMB_AT_S):
        return False
    return bool(cap.set(cv2.CAP_PROP_POS_FRAMES, round(info.fps * THUMB_AT_S)))


def _check_end(
    cap: Any, path: Path, info: _Stream, limits: ProbeLimits, deadline: float
) -> tuple[bool, str | None]:
    """Whether the last frames decode: seek near the end and grab them.

    CAP_PROP_FRAME_COUNT is the container's claim, not a fact, so the frames
    are grabbed. OpenCV seeks to the keyframe before the target and decodes
    forward, so this costs about one GOP however long the clip is. When the
    seek is refused or lands somewhere implausible (OpenCV cannot seek in
    MPEG-TS), or when it finds the clip short, a bounded sequential read
    decides; a clip is never called damaged on a seek's word alone.
    """
    n = info.frames
    if n is not None and n > TAIL_FRAMES:
        target = n - TAIL_FRAMES
        if cap.set(cv2.CAP_PROP_POS_FRAMES, target):
            pos = cap.get(cv2.CAP_PROP_POS_FRAMES)
            if math.isfinite(pos) and 0 <= pos <= n:
                reached, _ = _grab(cap, int(pos), TAIL_FRAMES + 2 * SLACK_FRAMES, deadline)
                if reached >= n - SLACK_FRAMES:
                    return True, None
    return _read_through(path, info, limits, deadline)


def _grab(cap: Any, pos: int, budget: int, deadline: float) -> tuple[int, bool]:
    """Grab up to ``budget`` frames from ``pos``: (position reached, end of stream seen)."""
    for _ in range(budget):
        if time.monotonic() > deadline:
            return pos, False
        if not cap.grab():
            return pos, True
        pos += 1
    return pos, False


def _read_through(
    path: Path, info: _Stream, limits: ProbeLimits, deadline: float
) -> tuple[bool, str | None]:
    cap = _open(path)
    if cap is None:
        return False, "the container could not be opened again to read it through"
    try:
        count, eof = _grab(cap, 0, limits.read_frames, deadline)
    finally:
        cap.release()
    n = info.frames
    if not eof:
        return False, (
            f"not verified to the end: the last frames could not be reached by seeking and "
            f"reading stopped at the limit ({count} frames" + (f" of {n}" if n else "") + ")"
        )
    if n is None:
        return (count > 0), (None if count > 0 else "no frame decodes")
    if count >= n - SLACK_FRAMES:
        return True, None
    return False, (
        f"decoding stops after frame {count} of the {n} the container lists: "
        "the clip is cut off or damaged"
    )


# --- photos ----------------------------------------------------------------------


def _probe_photo(path: Path, size: int, thumb_out: Path | None, limits: ProbeLimits) -> MediaFacts:
    if size > limits.photo_bytes:
        return _failed(
            PHOTO, f"{size} bytes is over the {limits.photo_bytes}-byte photo limit: not decoded"
        )
    with path.open("rb") as f:
        data = f.read(limits.photo_bytes + 1)
    if data[:3] == b"\xff\xd8\xff":
        codec, dims, whole = "jpeg", _jpeg_size(data), _jpeg_whole(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        codec, dims, whole = "png", _png_size(data), _png_whole(data)
    else:
        return _failed(PHOTO, "not a JPEG or PNG image", decoder=DECODER)
    if dims is None:
        return _failed(PHOTO, f"{codec} header unreadable", codec=codec, decoder=DECODER)
    width, height = dims
    known: dict[str, Any] = {"width": width, "height": height, "codec": codec, "decoder": DECODER}
    if width * height > limits.photo_pixels:
        return _failed(
            PHOTO,
            f"{width} x {height} pixels is over the {limits.photo_pixels}-pixel limit: "
            "not decoded (decompression-bomb guard)",
            **known,
        )
    # A reduced decode still reads every byte of the image data (JPEG scales in
    # the DCT) but keeps memory and time down; the thumbnail needs no more.
    flag = cv2.IMREAD_COLOR
    for factor, reduced in (
        (8, cv2.IMREAD_REDUCED_COLOR_8),
        (4, cv2.IMREAD_REDUCED_COLOR_4),
        (2, cv2.IMREAD_REDUCED_COLOR_2),
    ):
        if width // factor >= THUMB_WIDTH:
            flag = reduced
            break
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None:
        return _failed(PHOTO, f"{codec} data does not decode", **known)
    thumbnail = _write_thumbnail(image, thumb_out) if thumb_out is not None else None
    if not whole:
        return _failed(
            PHOTO,
            f"{codec} ends before its end marker: the file is cut off",
            thumbnail=thumbnail,
            **known,
        )
    return MediaFacts(PHOTO, True, thumbnail=thumbnail, **known)


_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOFn marker segment (ITU-T T.81 B.2.2)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker in _JPEG_SOF and i + 9 <= len(data):
            height, width = struct.unpack_from(">HH", data, i + 5)
            return (width, height) if width and height else None
        if marker == 0xDA or length < 2:  # image data before any frame header
            return None
        i += 2 + length
    return None


def _jpeg_whole(data: bytes) -> bool:
    """The last scan is followed by an end-of-image marker. In entropy-coded
    data 0xFF is always stuffed, so FFD9/FFDA there are real markers."""
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") > 0


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return (width, height) if width and height else None


def _png_whole(data: bytes) -> bool:
    """The 12-byte IEND chunk (empty, fixed CRC) is there; data after it is tolerated."""
    return data.rfind(b"\x00\x00\x00\x00IEND\xaeB`\x82") > data.rfind(b"IDAT") > 0


# --- audio -----------------------------------------------------------------------

# Leading bytes of the compressed formats the dock cannot decode: a file that
# lacks them is not what its name says (decodes False); one that has them is
# kept as "not checked" (decodes None).
_AUDIO_MAGIC: dict[str, tuple[bytes, ...]] = {
    "amr": (b"#!AMR",),
    "mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xfa", b"\xff\xe3", b"\xff\xe2"),
    "aac": (b"ID3", b"ADIF", b"\xff\xf0", b"\xff\xf1", b"\xff\xf8", b"\xff\xf9"),  # ADTS sync words
    "ogg": (b"OggS",),
    "opus": (b"OggS",),
    "flac": (b"fLaC",),
    "wma": (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11",),
}


def _probe_audio(path: Path, fmt: str, head: bytes, size: int) -> MediaFacts:
    if fmt == "wav":
        return _probe_wav(path, size)
    if fmt == "m4a":
        if head[4:8] != b"ftyp":
            return _failed(AUDIO, "not an MPEG-4 audio file (no ftyp box)")
        return MediaFacts(AUDIO, None)
    magic = _AUDIO_MAGIC.get(fmt)
    if magic is not None and not head.startswith(magic):
        return _failed(AUDIO, f"not an {fmt.upper()} file (its leading bytes are wrong)")
    return MediaFacts(AUDIO, None)  # no decoder for it on the dock: duration unknown


def _probe_wav(path: Path, size: int) -> MediaFacts:
    """PCM through the standard ``wave`` module; other codecs (IMA ADPCM, G.711,
    common on voice recorders) by walking the RIFF chunks."""
    try:
        with wave.open(str(path), "rb") as w:
            frames, rate = w.getnframes(), w.getframerate()
            frame_bytes = w.getsampwidth() * w.getnchannels()
            whole = frames > 0 and _wav_tail(w, frames, frame_bytes)
    except (wave.Error, EOFError) as e:
        riff = _riff_wav(path, size)
        if riff is None:
            return _failed(AUDIO, f"not a readable WAV file: {e}", decoder="wave")
        return riff
    facts: dict[str, Any] = {
        "duration_ms": round(frames * 1000 / rate) if rate > 0 else None,
        "codec": "pcm",
        "decoder": "wave",
    }
    if rate <= 0:
        return _failed(AUDIO, "WAV header gives no sample rate", **facts)
    if frames == 0 and size > 44:
        return _failed(
            AUDIO,
            f"WAV header lists no audio although the file holds {size} bytes: the recording was never finalised",
            **facts,
        )
    if not whole:
        return _failed(AUDIO, "WAV audio ends before the length its header gives: cut off", **facts)
    return MediaFacts(AUDIO, True, **facts)


def _wav_tail(w: Any, frames: int, frame_bytes: int) -> bool:
    w.setpos(frames - 1)
    return len(w.readframes(1)) == frame_bytes


def _riff_wav(path: Path, size: int) -> MediaFacts | None:
    """Any WAV codec by its RIFF chunks; None if the file is not RIFF/WAVE.

    Duration = the ``fact`` chunk's sample count / sample rate (the chunk every
    non-PCM WAV must carry), else data bytes / the header's byte rate.
    """
    with path.open("rb") as f:
        if f.read(12)[8:12] != b"WAVE":
            return None
        tag = rate = byte_rate = samples = None
        for _ in range(64):  # chunks before 'data'; a real file has a handful
            header = f.read(8)
            if len(header) < 8:
                return _failed(AUDIO, "WAV file has no data chunk", decoder="riff")
            chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk in (b"fmt ", b"fact"):
                body = f.read(min(length, 64))
                if chunk == b"fact" and len(body) >= 4:
                    (samples,) = struct.unpack_from("<I", body)
                elif chunk == b"fmt " and len(body) >= 16:
                    tag, _, rate, byte_rate = struct.unpack_from("<HHII", body)
                f.seek(length - len(body) + (length & 1), os.SEEK_CUR)
            elif chunk == b"data":
                return _wav_data(f.tell(), length, size, tag, rate, byte_rate, samples)
            else:
                f.seek(length + (length & 1), os.SEEK_CUR)
    return _failed(AUDIO, "WAV file has too many chunks before its data", decoder="riff")


def _wav_data(
    offset: int,
    length: int,
    size: int,
    tag: int | None,
    rate: int | None,
    byte_rate: int | None,
    samples: int | None,
) -> MediaFacts:
    known: dict[str, Any] = {
        "codec": None if tag is None else f"wav 0x{tag:04x}",
        "decoder": "riff",
    }
    if not rate or not byte_rate:
        return _failed(AUDIO, "WAV data before a usable format chunk", **known)
    if length in (0, 0xFFFFFFFF):
        return _failed(AUDIO, "WAV header was never finalised (recording interrupted?)", **known)
    known["duration_ms"] = round(
        (samples * 1000 / rate) if samples else (length * 1000 / byte_rate)
    )
    if offset + length > size:
        return _failed(AUDIO, "WAV audio ends before the length its header gives: cut off", **known)
    return MediaFacts(AUDIO, True, **known)


# --- thumbnails ------------------------------------------------------------------


def _write_thumbnail(image: Any, out: Path) -> Path | None:
    """A JPEG THUMB_WIDTH wide, written 0600 via a temp file and rename."""
    try:
        height, width = image.shape[:2]
        if width > THUMB_WIDTH:
            size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return None
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(out.parent)
    except (OSError, cv2.error) as e:
        log.warning("thumbnail %s not written: %s", out, e)
        return None
    return out


# --- in a child process ------------------------------------------------------------


def probe_isolated(
    path: Path,
    thumb_out: Path | None = None,
    *,
    name: str | None = None,
    timeout_s: float = 120.0,
    memory_bytes: int = 4 << 30,
    limits: ProbeLimits = DEFAULT_LIMITS,
) -> MediaFacts:
    """``probe`` in a child process with an address-space limit and a timeout.

    FFmpeg's decoders are C parsing hostile input; a crash or a hang there
    cannot be caught in Python. In a child it costs one probe: the recording
    is kept and flagged (``decodes=False``, problem "crashed"/"timed out").
    Costs about the start of a Python with OpenCV (~0.3 s) per file.
    """
    kind = _classify(name or path.name, _safe_head(path))[0]
    cmd = [
        sys.executable,
        "-m",
        "agent.offload.probe",
        f"--memory={memory_bytes}",
        f"--read-frames={limits.read_frames}",
        f"--read-seconds={limits.read_seconds}",
        f"--photo-bytes={limits.photo_bytes}",
        f"--photo-pixels={limits.photo_pixels}",
    ]
    if name is not None:
        cmd.append(f"--name={name}")
    if thumb_out is not None:
        cmd.append(f"--thumb={thumb_out}")
    cmd += ["--", str(path)]
    # Few malloc arenas: a per-thread arena each reserves 64 MB of address space.
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            timeout=timeout_s,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return _failed(kind, f"the probe gave no answer within {timeout_s:g} s and was stopped")
    except OSError as e:
        return _failed(kind, f"the probe could not be started: {e}")
    if done.returncode < 0:
        return _failed(kind, f"the decoder crashed on this file ({_signal_name(-done.returncode)})")
    try:
        return _from_json(json.loads(done.stdout))
    except (ValueError, TypeError, KeyError) as e:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return _failed(kind, f"the probe failed (exit {done.returncode}): {tail[0] or e}")


class ProbeWorkers:
    """Long-lived probe processes, so a dock probing hundreds of clips pays for a
    Python with OpenCV once per worker, not once per file.

    Each worker runs ``python -m agent.offload.probe --serve`` under the same address-space
    limit as ``probe_isolated`` and answers one JSON line per request. A worker
    that crashes, hangs past the timeout or answers nonsense is killed and
    replaced; that recording is flagged as ``probe_isolated`` would flag it.
    """

    def __init__(
        self,
        count: int = max(1, (os.cpu_count() or 1)),
        *,
        timeout_s: float = 120.0,
        memory_bytes: int = 4 << 30,
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._idle: queue.Queue[subprocess.Popen[bytes] | None] = queue.Queue()
        for _ in range(count):
            self._idle.put(None)  # started on first use

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.offload.probe",
                "--serve",
                f"--memory={self.memory_bytes}",
                "-",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        )

    def probe(
        self, path: Path, thumb_out: Path | None = None, *, name: str | None = None
    ) -> MediaFacts:
        kind = _classify(name or path.name, _safe_head(path))[0]
        worker = self._idle.get()
        try:
            if worker is None or worker.poll() is not None:
                worker = self._start()
            request = {
                "path": str(path),
                "thumb": None if thumb_out is None else str(thumb_out),
                "name": name,
            }
            assert worker.stdin is not None and worker.stdout is not None  # noqa: S101 - pipes set above
            worker.stdin.write((json.dumps(request) + "\n").encode())
            worker.stdin.flush()
            ready, _, _ = select.select([worker.stdout], [], [], self.timeout_s)
            line = worker.stdout.readline() if ready else b""
            if not line:
                code = worker.poll()
                worker.kill()
                worker.wait()
                worker = None
                if code is not None and code < 0:
                    return _failed(
                        kind, f"the decoder crashed on this file ({_signal_name(-code)})"
                    )
                if not ready:
                    return _failed(
                        kind,
                        f"the probe gave no answer within {self.timeout_s:g} s and was stopped",
                    )
                return _failed(kind, "the probe stopped without an answer")
            try:
                return _from_json(json.loads(line))
            except (ValueError, TypeError, KeyError) as e:
                worker.kill()
                worker.wait()
                worker = None
                return _failed(kind, f"the probe answered nonsense: {e}")
        except OSError as e:
            if worker is not None:
                worker.kill()
                worker.wait()
            worker = None
            return _failed(kind, f"the probe could not run: {e}")
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        while not self._idle.empty():
            worker = self._idle.get_nowait()
            if worker is not None and worker.poll() is None:
                if worker.stdin is not None:
                    worker.stdin.close()
                worker.wait(5)


def _serve(limits: ProbeLimits) -> int:
    """One request per stdin line: {"path", "thumb", "name"} -> facts as one JSON line."""
    for line in sys.stdin:
        request = json.loads(line)
        thumb = request.get("thumb")
        facts = probe(
            Path(request["path"]),
            Path(thumb) if thumb else None,
            name=request.get("name"),
            limits=limits,
        )
        out = {f.name: getattr(facts, f.name) for f in fields(facts)}
        out["thumbnail"] = None if facts.thumbnail is None else str(facts.thumbnail)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _safe_head(path: Path) -> bytes:
    try:
        return _head(path)
    except OSError:
        return b""


_INT_FIELDS = ("duration_ms", "fps_milli", "frames", "width", "height")
_STR_FIELDS = ("codec", "problem", "decoder")


def _from_json(data: Any) -> MediaFacts:
    """MediaFacts from the child's output, every field checked."""
    if not isinstance(data, dict) or data.get("kind") not in (VIDEO, AUDIO, PHOTO, OTHER):
        raise ValueError("not a probe result")
    decodes = data["decodes"]
    if decodes is not None and not isinstance(decodes, bool):
        raise ValueError("decodes")
    values: dict[str, Any] = {"kind": data["kind"], "decodes": decodes}
    for key in _INT_FIELDS:
        v = data[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or abs(v) > _MAX_INT):
            raise ValueError(key)
        values[key] = v
    for key in _STR_FIELDS:
        v = data[key]
        if v is not None and not isinstance(v, str):
            raise ValueError(key)
        values[key] = v
    thumb = data["thumbnail"]
    values["thumbnail"] = Path(thumb) if isinstance(thumb, str) else None
    return MediaFacts(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.offload.probe [--thumb OUT] [--name NAME] -- PATH``: facts as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m agent.offload.probe", description=main.__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--thumb", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--memory", type=int, help="address-space limit in bytes")
    parser.add_argument("--read-frames", type=int, default=DEFAULT_LIMITS.read_frames)
    parser.add_argument("--read-seconds", type=float, default=DEFAULT_LIMITS.read_seconds)
    parser.add_argument("--photo-bytes", type=int, default=DEFAULT_LIMITS.photo_bytes)
    parser.add_argument("--photo-pixels", type=int, default=DEFAULT_LIMITS.photo_pixels)
    parser.add_argument("--serve", action="store_true", help="answer JSON requests on stdin")
    args = parser.parse_args(argv)
    if args.memory:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory, args.memory))
    limits = ProbeLimits(args.read_frames, args.read_seconds, args.photo_bytes, args.photo_pixels)
    if args.serve:
        return _serve(limits)
    facts = probe(args.path, args.thumb, name=args.name, limits=limits)
    out = {f.name: getattr(facts, f.name) for f in fields(facts)}
    out["thumbnail"] = None if facts.thumbnail is None else str(facts.thumbnail)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
