"""The media probe (agent.offload.probe) on real clips made by ffmpeg (testing.md, "Footage").

Every clip is made once per session; what ffmpeg was told (size, rate, length,
codec) is what the probe must find. Damaged and hostile files are cut or forged
from them.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pytest

from agent.offload import probe as probe_module
from agent.offload.probe import MediaFacts, ProbeLimits, probe, probe_isolated
from agent.offload.story import RecordingFact, StoryPolicy, analyse
from agent.records.anomalies import UNDECODABLE
from hashing import canonical

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="needs ffmpeg (Debian package ffmpeg)")


@dataclass(frozen=True)
class Media:
    root: Path

    def __getitem__(self, name: str) -> Path:
        return self.root / name


def _ffmpeg(out: Path, *args: str) -> None:
    assert FFMPEG is not None
    subprocess.run(
        [FFMPEG, "-v", "error", "-nostdin", "-y", *args, str(out)], check=True, timeout=60
    )


def _cut(src: Path, dst: Path, fraction: float) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds one tiny IDAT: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    if FFMPEG is None:
        pytest.skip("needs ffmpeg (Debian package ffmpeg)")
    root = tmp_path_factory.mktemp("media")
    src = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "3"]
    h264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25"]
    _ffmpeg(root / "clip.mp4", *src, *h264)  # moov atom at the end (ffmpeg's default)
    _ffmpeg(root / "fast.mp4", *src, *h264, "-movflags", "+faststart")
    _ffmpeg(
        root / "clip.avi",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=640x480:rate=30",
        "-t",
        "2",
        "-c:v",
        "mjpeg",
        "-q:v",
        "8",
    )
    _ffmpeg(
        root / "av.mp4",
        *src,
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "3",
        *h264, "-c:a", "aac", "-shortest",
    )  # fmt: skip
    # ffmpeg's default GOP: OpenCV (5.0) cannot seek in this MPEG-TS, so it is read through.
    ts = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    _ffmpeg(root / "clip.ts", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", "3", *ts)
    # Shorter than the tail the end check seeks to: always read through.
    _ffmpeg(
        root / "short.mp4",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25",
        "-frames:v",
        "6",
        *h264,
    )
    sine = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "2.5"]
    _ffmpeg(root / "tone.wav", *sine)
    _ffmpeg(root / "adpcm.wav", *sine, "-c:a", "adpcm_ima_wav")
    _ffmpeg(root / "tone.mp3", *sine)
    _ffmpeg(root / "photo.jpg", "-f", "lavfi", "-i", "testsrc=size=640x480", "-frames:v", "1")
    _ffmpeg(root / "photo.png", "-f", "lavfi", "-i", "testsrc=size=64x48", "-frames:v", "1")
    # Damaged and hostile files.
    _cut(root / "clip.mp4", root / "cut.mp4", 0.6)  # loses its moov atom
    _cut(root / "fast.mp4", root / "cut-fast.mp4", 0.6)  # keeps its index, loses frames
    _cut(root / "clip.avi", root / "cut.avi", 0.6)
    _cut(root / "tone.wav", root / "cut.wav", 0.6)
    _cut(root / "photo.jpg", root / "cut.jpg", 0.6)
    (root / "zero.mp4").write_bytes(b"")
    (root / "random.mp4").write_bytes(os.urandom(64 * 1024))
    (root / "random.mp3").write_bytes(b"\x00" + os.urandom(4096))
    (root / "text.mp4").write_text("not a video\n" * 100)
    shutil.copy(root / "photo.jpg", root / "photo-named.mp4")
    (root / "playlist.mp4").write_text(
        f"#EXTM3U\n#EXTINF:3.0,\n{root / 'clip.ts'}\n#EXT-X-ENDLIST\n"
    )
    (root / "concat.mp4").write_text(f"ffconcat version 1.0\nfile '{root / 'clip.mp4'}'\n")
    (root / "bomb.png").write_bytes(_png_header_only(50_000, 50_000))
    wav = bytearray((root / "tone.wav").read_bytes())
    at = wav.index(b"data")
    wav[at + 4 : at + 8] = b"\x00\x00\x00\x00"  # a recorder that died before closing the file
    (root / "unfinished.wav").write_bytes(bytes(wav))
    shutil.copy(root / "clip.mp4", root / "0123abcd")  # as in the store: no extension
    return Media(root)


def check_body(facts: MediaFacts) -> None:
    body = facts.as_body()
    canonical.dumps(body)  # strings, integers, booleans, null only
    assert set(body) == {
        "kind", "decodes", "duration_ms", "fps_milli", "frames", "width", "height", "codec", "problem", "decoder",
    }  # fmt: skip


# --- what ffmpeg was told ------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip.mp4", "fast.mp4", "av.mp4"])
def test_h264_mp4(media: Media, name: str) -> None:
    facts = probe(media[name])
    check_body(facts)
    assert facts.kind == "video" and facts.decodes is True and facts.problem is None
    assert (facts.width, facts.height, facts.codec) == (320, 240, "h264")
    assert facts.fps_milli == 25_000 and facts.fps == 25.0
    assert facts.frames == 75
    assert facts.duration_ms is not None and abs(facts.duration_ms - 3000) <= 40
    assert facts.decoder == f"opencv {cv2.__version__}"


def test_moov_at_end_and_faststart_give_the_same_facts(media: Media) -> None:
    assert probe(media["clip.mp4"]) == probe(media["fast.mp4"])


def test_mjpeg_avi(media: Media) -> None:
    facts = probe(media["clip.avi"])
    check_body(facts)
    assert (facts.decodes, facts.width, facts.height, facts.codec) == (True, 640, 480, "MJPG")
    assert (facts.fps_milli, facts.frames) == (30_000, 60)
    assert facts.duration_ms is not None and abs(facts.duration_ms - 2000) <= 34


def test_mpeg_ts(media: Media) -> None:
    facts = probe(media["clip.ts"])
    check_body(facts)
    assert (facts.decodes, facts.fps_milli, facts.codec) == (True, 30_000, "h264")
    assert facts.frames is not None and abs(facts.frames - 90) <= 2  # an estimate in MPEG-TS


def test_reading_through_is_bounded(media: Media) -> None:
    assert probe(media["short.mp4"]).decodes is True
    assert probe(media["short.mp4"]).frames == 6
    for limits in (ProbeLimits(read_frames=3), ProbeLimits(read_seconds=0)):
        facts = probe(media["short.mp4"], limits=limits)
        assert facts.decodes is False and facts.frames == 6
        assert facts.problem is not None and "not verified to the end" in facts.problem


def test_wav(media: Media) -> None:
    facts = probe(media["tone.wav"])
    check_body(facts)
    assert (facts.kind, facts.decodes, facts.duration_ms, facts.codec, facts.decoder) == (
        "audio", True, 2500, "pcm", "wave",
    )  # fmt: skip
    adpcm = probe(media["adpcm.wav"])  # not PCM: the wave module refuses, the RIFF walk measures it
    assert adpcm.decodes is True and adpcm.codec == "wav 0x0011"
    assert adpcm.duration_ms is not None and abs(adpcm.duration_ms - 2500) <= 100


def test_compressed_audio_is_kept_unchecked(media: Media) -> None:
    facts = probe(media["tone.mp3"])
    check_body(facts)
    assert (facts.kind, facts.decodes, facts.duration_ms, facts.problem) == (
        "audio",
        None,
        None,
        None,
    )
    fake = probe(media["random.mp3"])
    assert fake.kind == "audio" and fake.decodes is False and "MP3" in (fake.problem or "")


@pytest.mark.parametrize(
    ("name", "size", "codec"), [("photo.jpg", (640, 480), "jpeg"), ("photo.png", (64, 48), "png")]
)
def test_photos(media: Media, name: str, size: tuple[int, int], codec: str) -> None:
    facts = probe(media[name])
    check_body(facts)
    assert (facts.kind, facts.decodes, (facts.width, facts.height), facts.codec) == (
        "photo",
        True,
        size,
        codec,
    )
    assert facts.duration_ms is None and facts.frames is None


# --- damaged files are kept and flagged ---------------------------------------------


def test_truncated_faststart_mp4_keeps_its_claims_and_says_where_it_stops(media: Media) -> None:
    facts = probe(media["cut-fast.mp4"])
    check_body(facts)
    assert facts.decodes is False
    assert (facts.width, facts.height, facts.codec, facts.frames, facts.fps_milli) == (
        320,
        240,
        "h264",
        75,
        25_000,
    )
    assert facts.problem is not None and "decoding stops after frame" in facts.problem
    assert "of the 75" in facts.problem


def test_truncated_mp4_without_its_index(media: Media) -> None:
    facts = probe(media["cut.mp4"])
    check_body(facts)
    assert facts.kind == "video" and facts.decodes is False
    assert facts.problem is not None and "cannot be opened" in facts.problem


def test_truncated_avi(media: Media) -> None:
    facts = probe(media["cut.avi"])
    assert facts.decodes is False and facts.frames == 60 and facts.width == 640


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("cut.wav", "ends before the length its header gives"),
        ("unfinished.wav", "never finalised"),
        ("cut.jpg", "jpeg"),
    ],
)
def test_truncated_audio_and_photos(media: Media, name: str, problem: str) -> None:
    facts = probe(media[name])
    check_body(facts)
    assert facts.decodes is False
    assert facts.problem is not None and problem in facts.problem


def test_a_truncated_clip_becomes_an_undecodable_anomaly(media: Media) -> None:
    facts = probe(media["cut-fast.mp4"])
    fact = RecordingFact(
        name="FILE0003.MP4",
        relpath="DCIM/FILE0003.MP4",
        mtime=datetime(2024, 3, 1, 8, 0, tzinfo=UTC),
        duration_ms=facts.duration_ms,
        size=media["cut-fast.mp4"].stat().st_size,
        decodes=facts.decodes,
        problem=facts.problem,
    )
    [anomaly] = analyse(
        [fact],
        StoryPolicy(),
        now=datetime(2024, 3, 1, 9, 0, tzinfo=UTC),
        serial="CAM1",
        officer="100001",
    )
    assert anomaly.kind == UNDECODABLE and anomaly.files == ("DCIM/FILE0003.MP4",)
    assert "decoding stops after frame" in anomaly.detail


# --- hostile files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["zero.mp4", "random.mp4", "text.mp4", "photo-named.mp4", "playlist.mp4", "concat.mp4"]
)
def test_non_videos_named_mp4(media: Media, name: str) -> None:
    facts = probe(media[name])
    check_body(facts)
    assert facts.kind == "video" and facts.decodes is False and facts.problem
    assert facts.frames is None and facts.duration_ms is None


def test_ffmpeg_stays_quiet_on_bad_files(media: Media, capfd: pytest.CaptureFixture[str]) -> None:
    probe(media["cut.mp4"])
    probe(media["cut-fast.mp4"])
    err = capfd.readouterr().err
    assert "moov atom not found" not in err and "partial file" not in err


def test_decompression_bomb_is_not_decoded(media: Media) -> None:
    facts = probe(media["bomb.png"])
    check_body(facts)
    assert (facts.decodes, facts.width, facts.height) == (False, 50_000, 50_000)
    assert facts.problem is not None and "decompression-bomb" in facts.problem


def test_photo_limits(media: Media) -> None:
    few_pixels = probe(media["photo.jpg"], limits=ProbeLimits(photo_pixels=1000))
    assert few_pixels.decodes is False and few_pixels.width == 640
    few_bytes = probe(media["photo.jpg"], limits=ProbeLimits(photo_bytes=1000))
    assert few_bytes.decodes is False and "byte photo limit" in (few_bytes.problem or "")


def test_not_a_regular_file_and_missing_files(tmp_path: Path) -> None:
    fifo = tmp_path / "FILE0001.MP4"
    os.mkfifo(fifo)
    facts = probe(fifo)  # must not block opening a FIFO
    assert (facts.kind, facts.decodes, facts.problem) == ("video", False, "not a regular file")
    gone = probe(tmp_path / "gone.MP4")
    assert (
        gone.decodes is False and gone.problem is not None and "FileNotFoundError" in gone.problem
    )
    other = tmp_path / "notes.txt"
    other.write_text("shift notes")
    assert probe(other) == MediaFacts("other", None)


def test_store_paths_are_sniffed_and_names_decide(media: Media) -> None:
    sniffed = probe(media["0123abcd"])
    assert sniffed.kind == "video" and sniffed.decodes is True and sniffed.frames == 75
    named = probe(media["0123abcd"], name="FILE0001.JPG")  # the name decides which checks run
    assert named.kind == "photo" and named.decodes is False


# --- thumbnails --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("clip.mp4", (320, 240)),
        ("clip.avi", (320, 240)),
        ("clip.ts", (320, 240)),
        ("photo.jpg", (320, 240)),
        ("photo.png", (64, 48)),
        ("cut-fast.mp4", (320, 240)),
    ],
)
def test_thumbnails_are_private_jpegs(
    media: Media, tmp_path: Path, name: str, size: tuple[int, int]
) -> None:
    out = tmp_path / "thumb.jpg"
    facts = probe(media[name], out)
    assert facts.thumbnail == out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"
    image = cv2.imread(str(out))
    assert image is not None and (image.shape[1], image.shape[0]) == size
    assert [p.name for p in tmp_path.iterdir()] == ["thumb.jpg"]  # no temp file left
    assert replace(facts, thumbnail=None) == probe(media[name])  # the thumbnail changes no fact


def test_no_thumbnail_for_what_does_not_decode(media: Media, tmp_path: Path) -> None:
    for name in ("random.mp4", "cut.mp4", "tone.wav", "bomb.png"):
        assert probe(media[name], tmp_path / f"{name}.jpg").thumbnail is None
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_thumbnail_is_not_an_error(media: Media, tmp_path: Path) -> None:
    facts = probe(media["clip.mp4"], tmp_path / "missing-dir" / "t.jpg")
    assert facts.decodes is True and facts.thumbnail is None


# --- in a child process ------------------------------------------------------------------


def test_isolated_probe_agrees(media: Media, tmp_path: Path) -> None:
    out = tmp_path / "t.jpg"
    isolated = probe_isolated(media["0123abcd"], out, name="FILE0001.MP4")
    assert isolated == replace(probe(media["clip.mp4"]), thumbnail=out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert probe_isolated(media["cut-fast.mp4"]) == probe(media["cut-fast.mp4"])


def test_isolated_probe_timeout(media: Media) -> None:
    facts = probe_isolated(media["clip.mp4"], timeout_s=0.01)
    assert (facts.kind, facts.decodes) == ("video", False)
    assert facts.problem == "the probe gave no answer within 0.01 s and was stopped"


def test_isolated_probe_survives_a_crashing_decoder(
    media: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FFmpeg cannot be made to crash on demand; a child that dies as it would stands in.
    crasher = tmp_path / "crash"
    crasher.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crasher.chmod(0o700)
    monkeypatch.setattr(sys, "executable", str(crasher))
    facts = probe_isolated(media["clip.mp4"])
    assert (facts.decodes, facts.problem) == (False, "the decoder crashed on this file (SIGSEGV)")
    silent = tmp_path / "silent"
    silent.write_text('#!/bin/sh\necho \'{"kind": "video", "decodes": 1.5}\'\n')
    silent.chmod(0o700)
    monkeypatch.setattr(sys, "executable", str(silent))
    facts = probe_isolated(media["clip.mp4"])
    assert facts.decodes is False and facts.problem is not None
    assert facts.problem.startswith("the probe failed (exit 0)")


def test_module_entry_point(media: Media, capsys: pytest.CaptureFixture[str]) -> None:
    assert probe_module.main(["--name=FILE0001.MP4", "--", str(media["0123abcd"])]) == 0
    out = capsys.readouterr().out
    assert '"decodes": true' in out and '"frames": 75' in out


def test_probe_workers_answer_like_probe_and_survive_a_crash(tmp_path: Path) -> None:
    """The long-lived probe processes give the same facts as an in-process probe,
    and a worker that dies is replaced without losing the next answer."""
    import os
    import signal

    from agent.offload.probe import ProbeWorkers, probe

    clip = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "2",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)],
        check=True,
    )  # fmt: skip
    workers = ProbeWorkers(1)
    try:
        direct = probe(clip, name="clip.mp4")
        first = workers.probe(clip, tmp_path / "t.jpg", name="clip.mp4")
        assert (first.kind, first.decodes, first.frames, first.width) == (
            direct.kind, direct.decodes, direct.frames, direct.width,
        )  # fmt: skip
        assert (tmp_path / "t.jpg").stat().st_size > 0
        worker = workers._idle.queue[0]
        assert worker is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        again = workers.probe(clip, name="clip.mp4")
        assert again.decodes is True and again.frames == direct.frames
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(os.urandom(100_000))
        assert workers.probe(junk, name="junk.mp4").decodes is False
    finally:
        workers.close()
