"""What kind of recording a file is, by its name: shared by the probe and the story.

Pure and import-light (no OpenCV), so ``agent.offload.story`` stays a pure module. The
extension decides which checks the probe runs; the content decides whether they
pass, so a file of random bytes named ``.MP4`` is probed as a video and fails.
"""

from __future__ import annotations

VIDEO = "video"
AUDIO = "audio"
PHOTO = "photo"
OTHER = "other"
KINDS = (VIDEO, AUDIO, PHOTO, OTHER)

# Containers body-worn cameras and other recorders write. The probe only lets
# FFmpeg use the matching demuxers (agent.offload.probe._FORMAT_WHITELIST).
VIDEO_EXTENSIONS = frozenset(
    {
        "mp4",
        "mov",
        "m4v",
        "3gp",
        "avi",
        "mkv",
        "webm",
        "ts",
        "mts",
        "m2ts",
        "mpg",
        "mpeg",
        "flv",
        "wmv",
        "asf",
    }
)
AUDIO_EXTENSIONS = frozenset({"wav", "mp3", "aac", "amr", "m4a", "ogg", "opus", "wma", "flac"})
# Photos are decoded in full, so only formats whose size can be read from the
# header first (agent.offload.probe checks it against a pixel limit before decoding).
PHOTO_EXTENSIONS = frozenset({"jpg", "jpeg", "png"})


def extension(name: str) -> str:
    """Lower-case extension without the dot; '' when there is none."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot and stem else ""


def kind_of(name: str) -> str:
    """'video', 'audio', 'photo' or 'other', from the file name's extension."""
    ext = extension(name)
    if ext in VIDEO_EXTENSIONS:
        return VIDEO
    if ext in AUDIO_EXTENSIONS:
        return AUDIO
    if ext in PHOTO_EXTENSIONS:
        return PHOTO
    return OTHER
