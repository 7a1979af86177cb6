"""Mounting a recorder's filesystem read-only, and unmounting it whatever happens.

Everything goes through util-linux ``mount`` / ``umount`` with list arguments
(no shell). Each filesystem type gets a *plan*: the kernel driver when the
running kernel has it (listed in /proc/filesystems, or a module for it is
installed), else a FUSE helper (exfat-fuse for exFAT, ntfs-3g for NTFS): a
Debian kiosk kernel always has vfat, but test machines and some minimal
kernels lack exfat, and ``mount -t exfat`` does not fall back to FUSE by itself.

Threat model: the filesystem image comes from outside. Only the types in
``plan()``'s table are mounted at all (each one a kernel or FUSE parser we are
prepared to expose to a hostile image); everything is mounted
``ro,nosuid,nodev,noexec`` and, after mounting, /proc/self/mountinfo is read
back to prove that those flags are really in force. FUSE helpers do not pass
``noexec`` (exfat-fuse keeps only its own options), so for FUSE the flags are
applied with a bind remount, which changes only the mount, not the filesystem.
"""

from __future__ import annotations

import logging
import platform
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hashing.errors import DeviceError

log = logging.getLogger(__name__)

# Mount flags every recorder gets, read-only or (for the wipe step) writable.
SAFE_FLAGS = ("nosuid", "nodev", "noexec")
# Files owned by root and private to it, whatever the camera's FAT says (FAT has
# no owners); UTF-8 names so GBK/UTF-16 names on the card arrive as UTF-8 bytes.
_PRIVATE = ("uid=0", "gid=0", "fmask=0077", "dmask=0077")
KERNEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "vfat": (*_PRIVATE, "utf8"),
    "exfat": (*_PRIVATE, "iocharset=utf8"),
    "ntfs3": (*_PRIVATE, "iocharset=utf8"),
    "ext2": (),
    "ext3": (),
    "ext4": (),
}
# ID_FS_TYPE (blkid's name) -> kernel filesystem names to try, in order.
KERNEL_NAMES: dict[str, tuple[str, ...]] = {
    "vfat": ("vfat",),
    "exfat": ("exfat",),
    "ntfs": ("ntfs3",),
    "ext2": ("ext2", "ext4"),  # ext4 mounts ext2/3 when the old drivers are not built
    "ext3": ("ext3", "ext4"),
    "ext4": ("ext4",),
}
# ID_FS_TYPE -> (FUSE mount helper, i.e. `mount -t <helper>` runs mount.<helper>; its options).
# exfat-fuse is always UTF-8 and takes uid/gid/fmask/dmask; it ignores nosuid/nodev/noexec.
FUSE_HELPERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "exfat": ("exfat-fuse", _PRIVATE),
    "ntfs": ("ntfs-3g", _PRIVATE),
}
SUPPORTED = frozenset(KERNEL_NAMES)

_SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"


@dataclass(frozen=True)
class MountPlan:
    """How one filesystem type is mounted on this machine."""

    fs_type: str  # as udev/blkid names it (ID_FS_TYPE)
    mount_type: str  # what `mount -t` gets: a kernel filesystem or a FUSE helper's name
    fuse: bool
    options: tuple[str, ...]  # type-specific options; the ro/rw and safety flags are added

    def option_string(self, *, writable: bool) -> str:
        return ",".join(("rw" if writable else "ro", *SAFE_FLAGS, *self.options))


def _kernel_filesystems() -> set[str]:
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in text.splitlines() if line.strip()}


def _kernel_module_installed(name: str) -> bool:
    """A loadable or built-in module for filesystem ``name`` (mount loads it on demand)."""
    base = Path("/lib/modules") / platform.release()
    pattern = re.compile(rf"(^|/){re.escape(name)}\.ko(\.[a-z]+)?(:|$)", re.MULTILINE)
    for index in ("modules.dep", "modules.builtin"):
        try:
            if pattern.search((base / index).read_text()):
                return True
        except OSError:
            continue
    return False


def _helper_installed(helper: str) -> bool:
    return shutil.which(f"mount.{helper}", path=_SBIN) is not None


def plan(fs_type: str) -> MountPlan:
    """The way to mount ``fs_type`` here. Raises DeviceError if it cannot be mounted."""
    names = KERNEL_NAMES.get(fs_type)
    if names is None:
        raise DeviceError(
            f"filesystem {fs_type!r} is not one a recorder uses; not mounted "
            f"(supported: {', '.join(sorted(SUPPORTED))})"
        )
    loaded = _kernel_filesystems()
    for name in names:
        if name in loaded or _kernel_module_installed(name):
            return MountPlan(fs_type, name, fuse=False, options=KERNEL_OPTIONS[name])
    fuse = FUSE_HELPERS.get(fs_type)
    if fuse is not None and _helper_installed(fuse[0]):
        return MountPlan(fs_type, fuse[0], fuse=True, options=fuse[1])
    wanted = f" or the FUSE helper mount.{fuse[0]} (Debian: {fuse[0]})" if fuse else ""
    raise DeviceError(
        f"this machine cannot mount {fs_type}: the kernel has no {'/'.join(names)} driver{wanted}",
        hint="install it and plug the recorder in again",
    )


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",  # a tool's message about a hostile label may not be UTF-8
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise DeviceError(
            f"`{' '.join(argv)}` did not finish within {timeout:.0f} s; the recorder may have "
            "hung: unplug it and plug it in again"
        ) from e
    except OSError as e:
        raise DeviceError(f"cannot run {argv[0]}: {e.strerror}; is util-linux installed?") from e


def check_block_device(devnode: str) -> None:
    """Refuse anything but an existing block device under /dev (``mount`` would
    happily loop-mount a regular file)."""
    if not devnode.startswith("/dev/") or "/../" in devnode:
        raise DeviceError(f"{devnode!r}: not a device node under /dev; not mounted")
    try:
        st = Path(devnode).stat()
    except OSError as e:
        raise DeviceError(f"{devnode}: {e.strerror}; the recorder has gone") from e
    if not stat.S_ISBLK(st.st_mode):
        raise DeviceError(f"{devnode}: not a block device; not mounted")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    mount_options: frozenset[str]  # per-mount flags (ro, nosuid, nodev, noexec, ...)
    fs_type: str  # fuseblk for a FUSE block filesystem
    source: str
    super_options: frozenset[str]


def mount_entry(mountpoint: Path) -> MountEntry | None:
    """The topmost mount at ``mountpoint`` from /proc/self/mountinfo, if any."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    found: MountEntry | None = None
    target = str(mountpoint)
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 6 or _unescape(fields[4]) != target:
            continue
        fs_type, source, super_opts = [*tail.split(), "", "", ""][:3]
        found = MountEntry(
            target,
            frozenset(fields[5].split(",")),
            fs_type,
            _unescape(source),
            frozenset(super_opts.split(",")),
        )
    return found


def _verify_flags(mountpoint: Path, *, writable: bool) -> None:
    entry = mount_entry(mountpoint)
    if entry is None:
        raise DeviceError(f"{mountpoint}: mount reported success but nothing is mounted there")
    want = {"rw" if writable else "ro", *SAFE_FLAGS}
    missing = want - entry.mount_options
    if missing:
        raise DeviceError(
            f"{mountpoint}: mounted without {','.join(sorted(missing))} "
            f"(have {','.join(sorted(entry.mount_options))}); refusing to use it"
        )


def mount(
    devnode: str, mountpoint: Path, how: MountPlan, *, writable: bool = False, timeout: float = 60.0
) -> None:
    """Mount ``devnode`` at ``mountpoint`` with the safety flags, and check them. Raises DeviceError."""
    check_block_device(devnode)
    opts = how.option_string(writable=writable)
    result = _run(["mount", "-t", how.mount_type, "-o", opts, devnode, str(mountpoint)], timeout)
    if result.returncode != 0:
        raise DeviceError(
            f"{devnode}: mounting {how.fs_type} ({how.mount_type}) at {mountpoint} failed: "
            f"{result.stderr.strip() or f'exit status {result.returncode}'}; "
            "check the recorder's filesystem (fsck) or plug it in again"
        )
    try:
        if how.fuse:
            # FUSE helpers drop nosuid/nodev/noexec; set them on the mount itself.
            flags = ",".join(("remount", "bind", "rw" if writable else "ro", *SAFE_FLAGS))
            result = _run(["mount", "-o", flags, str(mountpoint)], timeout)
            if result.returncode != 0:
                raise DeviceError(
                    f"{mountpoint}: cannot set {flags}: {result.stderr.strip()}; not used"
                )
        _verify_flags(mountpoint, writable=writable)
    except BaseException:
        unmount(mountpoint, timeout=timeout)
        raise
    log.info(
        "mounted %s (%s via %s) %s at %s",
        devnode,
        how.fs_type,
        how.mount_type,
        "read-write" if writable else "read-only",
        mountpoint,
    )


def unmount(mountpoint: Path, *, lazy: bool = True, timeout: float = 60.0) -> bool:
    """Unmount; if busy and ``lazy``, detach lazily (logged). Never raises; False if still mounted."""
    if mount_entry(mountpoint) is None:
        return True
    try:
        result = _run(["umount", str(mountpoint)], timeout)
    except DeviceError as e:
        log.error("%s", e)
        result = None
    if result is not None and result.returncode == 0:
        log.info("unmounted %s", mountpoint)
        return True
    why = result.stderr.strip() if result is not None else "umount hung"
    if not lazy:
        log.warning("cannot unmount %s: %s", mountpoint, why)
        return False
    log.warning("cannot unmount %s (%s); detaching it lazily", mountpoint, why)
    try:
        result = _run(["umount", "-l", str(mountpoint)], timeout)
    except DeviceError as e:
        log.error("%s", e)
        return False
    if result.returncode != 0:
        log.error("lazy unmount of %s failed too: %s", mountpoint, result.stderr.strip())
        return False
    return True


def remount(
    devnode: str, mountpoint: Path, how: MountPlan, *, writable: bool, timeout: float = 60.0
) -> None:
    """Switch a mount between read-only and read-write. Raises DeviceError.

    A kernel filesystem is remounted in place. A FUSE helper opened the device
    read-only and cannot be told otherwise, so it is unmounted (refused if
    files are still open: a lazy unmount would leave two helpers on one
    device) and mounted again.
    """
    if how.fuse:
        if not unmount(mountpoint, lazy=False, timeout=timeout):
            raise DeviceError(
                f"{mountpoint}: still in use, cannot switch to "
                f"{'read-write' if writable else 'read-only'}; close its files first"
            )
        mount(devnode, mountpoint, how, writable=writable, timeout=timeout)
        return
    flags = ",".join(("remount", "rw" if writable else "ro", *SAFE_FLAGS))
    result = _run(["mount", "-o", flags, str(mountpoint)], timeout)
    if result.returncode != 0:
        raise DeviceError(
            f"{mountpoint}: remount {'read-write' if writable else 'read-only'} failed: "
            f"{result.stderr.strip()}"
        )
    _verify_flags(mountpoint, writable=writable)
    log.info("remounted %s %s", mountpoint, "read-write" if writable else "read-only")
