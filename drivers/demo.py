"""The demo's simulated body-worn camera: real MP4 clips in a real camera's layout.

``DemoCamera`` writes what a camera's storage looks like when it docks::

    <folder>/
        recorder.json                              identity, for the folder driver
        DCIM/100MEDIA/DEMO0001_20260101080000_0001.MP4
        DCIM/100MEDIA/DEMO0001_20260101080004_0002.MP4
        ...

Clip numbers run on from one recording session to the next and each clip starts
where the previous one ended, as a camera that splits a continuous recording
does. A deliberate ``Gap`` (clip numbers and time missing) gives the anomaly
check something to find. ``plug_into`` moves the camera under a folder the
folder driver watches, appearing there in one rename.

Clips are MPEG-4 Part 2 (OpenCV's ``mp4v``): the opencv-python wheel cannot
encode H.264. OpenCV and numpy are imported only when a clip is written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from drivers.folder import IDENTITY_FILE
from hashing.errors import ConfigError

FPS = 15
MEDIA_DIR = Path("DCIM") / "100MEDIA"


def clip_name(serial: str, start: datetime, number: int) -> str:
    """``<SERIAL>_<YYYYMMDDhhmmss>_<NNNN>.MP4``, the usual body-worn camera name."""
    return f"{serial}_{start:%Y%m%d%H%M%S}_{number:04d}.MP4"


def write_clip(
    path: Path, seconds: int, *, label: str, tint: int = 0, size: tuple[int, int] = (640, 360)
) -> Path:
    """One short MP4 clip with moving content and a caption. Raises ConfigError."""
    import cv2  # noqa: PLC0415 - heavy; only the demo and tests make footage
    import numpy as np  # noqa: PLC0415

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, size)
    if not writer.isOpened():
        raise ConfigError("OpenCV cannot write MP4 here; is opencv-python-headless installed?")
    try:
        box = max(8, height // 8)
        scale = width / 800
        for frame_no in range(seconds * FPS):
            frame: Any = np.zeros((height, width, 3), np.uint8)
            frame[:, :, tint % 3] = 40 + (frame_no * 3) % 160
            x = (frame_no * 8) % max(1, width - box)
            cv2.rectangle(
                frame, (x, height // 2 - box), (x + box, height // 2 + box), (255, 255, 255), -1
            )
            text = f"{label} frame {frame_no}"
            cv2.putText(
                frame, text, (box, box * 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2
            )
            writer.write(frame)
    finally:
        writer.release()
    return path


def make_clips(folder: Path, count: int = 3, seconds: int = 4) -> list[Path]:
    """Write ``count`` short MP4 clips named as a body-worn camera names them."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return [
        write_clip(
            folder / f"DEMO0001_{stamp}_{n + 1:04d}.MP4",
            seconds,
            label=f"DEMO0001 clip {n + 1}",
            tint=n,
        )
        for n in range(count)
    ]


STATION_TIME = timezone(timedelta(hours=8))  # China Standard Time, as agent.offload.story assumes


@dataclass(frozen=True)
class Gap:
    """Clips missing from a camera: ``missing`` clip numbers after the ``after``-th clip
    written, and ``seconds`` of time with no recording on top of theirs."""

    after: int
    missing: int = 1
    seconds: int = 600


class DemoCamera:
    """A simulated body-worn camera whose storage is ``folder`` (see module docstring)."""

    def __init__(
        self,
        folder: Path,
        serial: str = "DEMO0001",
        officer: str = "100001",
        *,
        officer_name: str | None = None,
        vendor: str = "evidock",
        model: str = "demo camera",
        size: tuple[int, int] = (640, 360),
    ) -> None:
        self.folder = folder
        self.serial = serial
        self.officer = officer
        self.officer_name = officer_name
        self.vendor = vendor
        self.model = model
        self.size = size
        self.next_number = 1
        self.clock: datetime | None = None  # device local time where the next clip starts

    @property
    def media(self) -> Path:
        return self.folder / MEDIA_DIR

    def identity(self) -> dict[str, str]:
        """The identity file's content (the folder driver's schema)."""
        values = {
            "serial": self.serial,
            "vendor": self.vendor,
            "model": self.model,
            "officer": self.officer,
            "officer_name": self.officer_name,
        }
        return {k: v for k, v in values.items() if v is not None}

    def record(
        self,
        count: int = 3,
        seconds: int = 4,
        *,
        start: datetime | None = None,
        gap: Gap | None = None,
    ) -> list[Path]:
        """Record ``count`` consecutive clips of ``seconds`` each; returns their paths.

        ``start`` is the device's local time at the first clip (default: so that
        the last clip ends now, or where the previous ``record`` stopped). Each
        file's mtime is its clip's end.
        """
        self.media.mkdir(parents=True, exist_ok=True)
        ident = self.folder / IDENTITY_FILE
        if not ident.exists():
            ident.write_text(json.dumps(self.identity(), ensure_ascii=False) + "\n", "utf-8")
        if start is not None:
            clock = start
        elif self.clock is not None:
            clock = self.clock
        else:
            total = count * seconds + (gap.missing * seconds + gap.seconds if gap else 0)
            # Cameras keep local time; the dock reads file names as station time (+08:00).
            clock = datetime.now(STATION_TIME).replace(microsecond=0) - timedelta(seconds=total)
        paths = []
        for n in range(count):
            if gap is not None and n == gap.after:
                self.next_number += gap.missing
                clock += timedelta(seconds=gap.missing * seconds + gap.seconds)
            path = self.media / clip_name(self.serial, clock, self.next_number)
            write_clip(
                path,
                seconds,
                label=f"{self.serial} {self.officer} #{self.next_number} {clock:%H:%M:%S}",
                tint=self.next_number,
                size=self.size,
            )
            clock += timedelta(seconds=seconds)
            end = clock.timestamp()
            os.utime(path, (end, end))
            paths.append(path)
            self.next_number += 1
        self.clock = clock
        return paths

    def plug_into(self, root: Path) -> Path:
        """Move the camera's folder to ``root/<serial>``, appearing there in one rename
        (it is first copied under a hidden name if ``root`` is on another filesystem)."""
        target = root / self.serial
        if target.exists():
            raise ConfigError(f"{target} exists: another camera with this serial is docked")
        try:
            self.folder.rename(target)
        except OSError:
            staging = root / f".{self.serial}.partial"
            shutil.copytree(self.folder, staging, symlinks=True)
            staging.rename(target)
            shutil.rmtree(self.folder)
        self.folder = target
        return target
