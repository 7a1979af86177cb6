"""Real stand-ins for a docking station's hardware: camera filesystems, loop
devices, FUSE, footage and udev hot-plug. For the drivers' and the daemon's
integration tests (testing.md: real parts, no mocks).

Everything here needs root and Debian packages that ``./run test`` installs
(umockdev gir1.2-umockdev-1.0 python3-gi exfatprogs exfat-fuse ffmpeg
e2fsprogs util-linux). ``need()`` skips a test when a tool is missing and we
are not root, and *fails* it when we are root (CI is root: a missing tool
there is a setup bug, not a reason to skip).

Filesystem images
    ``exfat_image(path, files)`` formats an exFAT image (mkfs.exfat) and fills
    it through exfat-fuse on a loop device; ``ext4_image(path, files,
    symlinks=, fifos=, device_nodes=)`` builds an ext4 image with ``mke2fs -d``
    (no mount needed). Keys of ``files`` are raw relative paths (bytes);
    parent folders are made as needed.

    Facts seen on this machine (kernel without vfat/exfat modules; FUSE works):
    exFAT stores UTF-16 names and exfat-fuse refuses a name that is not UTF-8
    (EILSEQ), so a raw GBK byte name cannot be put on exFAT; Chinese names go on
    it as UTF-8 (that is how a camera's GBK names reach the dock from exFAT/FAT
    mounted with utf8). Raw non-UTF-8 names, symlinks, FIFOs and device nodes
    are tested on ext4 images, which keep bytes as they are. exFAT has no
    symlinks or FIFOs at all.

Loop devices and FUSE
    ``loop_device(image)`` yields ``/dev/loopN`` (``losetup -f --show``) and
    always detaches. ``fuse_pid(mountpoint)`` finds the FUSE helper serving a
    mount; ``kill_fuse(mountpoint)`` SIGKILLs it and waits until it is gone:
    the closest thing to yanking a camera here. Reads on open files then fail
    at once with ENOTCONN (not a hang), ``close()`` of such a file fails with
    ENOTCONN too, and ``umount`` still works. (``umount -l`` plus ``losetup -d``
    is no unplug: the loop device lingers with autoclear until the FUSE helper
    lets go, and reads keep working.) ``mounts_under(folder)`` lists what is
    mounted below a folder, to assert nothing leaks.

Footage
    ``ffmpeg_clip(path, seconds, size)`` writes a real H.264 MP4 (libx264,
    testsrc) and returns its bytes.

udev hot-plug: ``UdevTestbed``
    umockdev's Testbed lives in a helper process (tests/integration/umockdev_bed.py),
    run by Debian's /usr/bin/python3 (which has python3-gi; the venv has no
    gi) under ``umockdev-wrapper``. The process under test needs no gi: start
    it with ``bed.env()`` (``LD_PRELOAD=libumockdev-preload.so.0`` and
    ``UMOCKDEV_DIR=<bed root>``), or with ``bed.popen(argv)``. Verified here
    with the venv's Python and pyudev 0.24:

    - a pyudev ``Monitor.from_netlink`` in the other process receives the
      bed's add / change / remove uevents, with the properties set;
      ``device.find_parent("usb", "usb_device")`` and its sysfs attributes
      work on add; on remove the properties come with the event but the
      attributes are usually gone already (the bed removes the device right
      after the uevent, as the kernel does), so a remove has no attributes;
    - ``Context.list_devices(subsystem="block", ID_BUS="usb")`` sees devices
      added before the process started;
    - the preload redirects /sys (all of it) and /dev paths that exist in the
      bed (none do: the bed creates no device nodes), so a ``DEVNAME`` that
      names a real ``/dev/loopN`` is really mounted by ``mount`` run from the
      process under test, FUSE included;
    - the preload is inherited by child processes (mount, mount.exfat-fuse);
      they see the fake /sys, which neither needs.

    No udevd runs here, so real loop devices never produce uevents of their own.
"""

from __future__ import annotations

import hashlib
import os
import select
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pytest

DEBIAN_PYTHON = "/usr/bin/python3"
BED_SCRIPT = Path(__file__).with_name("umockdev_bed.py")
PRELOAD = "libumockdev-preload.so.0"
DEBIAN_GI = "/usr/lib/python3/dist-packages/gi"  # python3-gi
_SBIN = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# -- tools -------------------------------------------------------------------------


def is_root() -> bool:
    return os.geteuid() == 0


def _have(tool: str) -> bool:
    if tool.startswith("/"):
        return Path(tool).exists()
    if tool.endswith((".typelib", ".so.0")):  # a library or GObject typelib, any multiarch
        lib = Path("/usr/lib")
        return any(lib.glob(f"*/{tool}")) or any(lib.glob(f"*/girepository-1.0/{tool}"))
    return shutil.which(tool, path=_SBIN) is not None


def need(*tools: str) -> None:
    """Skip the test without root; fail it when root lacks a tool (a CI setup bug).

    ``tools`` are commands on PATH (sbin included), absolute paths, or library /
    typelib file names looked up under /usr/lib/<multiarch>/. /dev/fuse and
    /dev/loop-control are always required.
    """
    missing = [t for t in (*tools, "/dev/fuse", "/dev/loop-control") if not _have(t)]
    if not is_root():
        why = f"; missing {', '.join(missing)}" if missing else ""
        pytest.skip(f"needs root to mount filesystems and use loop devices{why}")
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}; `./run test` installs the Debian packages "
            "(TEST_DEBS in ./run)"
        )


def run(argv: Sequence[str], *, timeout: float = 60.0, **kwargs: Any) -> str:
    """Run a tool (list arguments, no shell); its stdout, or AssertionError with its stderr."""
    result = subprocess.run(
        list(argv), capture_output=True, timeout=timeout, check=False, text=True, **kwargs
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return str(result.stdout)


def sha256sum(path: Path) -> str:
    """The digest as coreutils' sha256sum prints it (an independent implementation)."""
    return run(["sha256sum", "--", str(path)]).split()[0]


# -- mounts, loop devices, FUSE -------------------------------------------------------


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[tuple[str, str, str, set[str]]]:
    """(source, mountpoint, type, options) for each line of /proc/self/mounts."""
    rows = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        src, mp, fstype, opts, *_ = line.split()
        rows.append((_unescape(src), _unescape(mp), fstype, set(opts.split(","))))
    return rows


def mount_options(mountpoint: Path) -> set[str] | None:
    """The options /proc/self/mounts shows for ``mountpoint`` (topmost mount), or None."""
    found = None
    for _, mp, _, opts in mounts():
        if mp == str(mountpoint):
            found = opts
    return found


def mounts_under(folder: Path) -> list[str]:
    """Mountpoints at or below ``folder``: must be [] after a test."""
    top = str(folder.resolve())
    return [mp for _, mp, _, _ in mounts() if mp == top or mp.startswith(top + "/")]


def loop_devices_for(image: Path) -> list[str]:
    """Loop devices whose backing file is ``image``."""
    out = run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"])
    target = str(image.resolve())
    found = []
    for line in out.splitlines():
        name, _, back = line.strip().partition(" ")
        if back.strip().removesuffix(" (deleted)") == target:
            found.append(name)
    return found


@contextmanager
def loop_device(image: Path, *, read_only: bool = False) -> Iterator[str]:
    """``image`` as a block device ``/dev/loopN``; always detached after (autoclear if busy)."""
    need("losetup")
    argv = ["losetup", "--find", "--show", *(["--read-only"] if read_only else []), str(image)]
    dev = run(argv).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], capture_output=True, check=False)


def umount(mountpoint: Path) -> None:
    """Unmount if mounted; lazily if busy (never leaves a mount behind)."""
    if mount_options(mountpoint) is None:
        return
    if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


@contextmanager
def fuse_exfat(devnode: str, mountpoint: Path, *, read_only: bool = False) -> Iterator[Path]:
    """Mount an exFAT device with exfat-fuse directly (not through a driver)."""
    need("mount.exfat-fuse")
    mountpoint.mkdir(parents=True, exist_ok=True)
    run(["mount.exfat-fuse", *(["-o", "ro"] if read_only else []), devnode, str(mountpoint)])
    try:
        yield mountpoint
    finally:
        umount(mountpoint)


def fuse_pid(mountpoint: Path) -> int | None:
    """The pid of the FUSE helper whose command line names ``mountpoint``, if running."""
    want = os.fsencode(str(mountpoint))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].rsplit(b"/", 1)[-1].startswith(b"mount.") and want in argv:
            return int(proc.name)
    return None


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # a zombie has closed its /dev/fuse: the mount is dead


def kill_fuse(mountpoint: Path, *, timeout: float = 10.0) -> None:
    """Simulate unplugging a FUSE-mounted recorder: SIGKILL its helper, wait until it is gone."""
    pid = fuse_pid(mountpoint)
    assert pid is not None, f"no FUSE helper serves {mountpoint}"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        assert time.monotonic() < deadline, f"FUSE helper {pid} survived SIGKILL"
        time.sleep(0.01)


# -- filesystem images ------------------------------------------------------------------


def _check_relpath(rel: bytes) -> list[bytes]:
    parts = rel.rstrip(b"/").split(b"/")
    if rel.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
        raise ValueError(f"{rel!r}: give a plain relative path")
    return parts


def _place(root: Path, rel: bytes) -> Path:
    """``root / rel`` for a raw relative path (surrogate-escaped), its parent folders made."""
    parts = _check_relpath(rel)
    target = root.joinpath(*(os.fsdecode(p) for p in parts))
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _fill(root: Path, files: Mapping[bytes, bytes]) -> None:
    """Write ``files`` under ``root`` (a key ending in b"/" makes just a folder)."""
    for rel, data in files.items():
        target = _place(root, rel)
        if rel.endswith(b"/"):
            target.mkdir(exist_ok=True)
            continue
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


def exfat_image(
    path: Path, files: Mapping[bytes, bytes], size_mb: int = 64, *, label: str = "EVIDOCK"
) -> Path:
    """An exFAT image holding ``files`` (raw relative paths -> contents).

    Filled through exfat-fuse on a loop device, unmounted and detached before
    returning. Names must be UTF-8 (exFAT stores UTF-16; see the module
    docstring): ValueError otherwise. exFAT has no symlinks or FIFOs; use
    ``ext4_image`` for those.
    """
    need("mkfs.exfat", "mount.exfat-fuse", "losetup")
    for rel in files:
        try:
            rel.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(
                f"{rel!r}: exFAT names are UTF-16; exfat-fuse refuses non-UTF-8 bytes "
                "(EILSEQ). Put raw byte names on ext4_image()."
            ) from None
    with path.open("wb") as f:
        f.truncate(size_mb << 20)
    run(["mkfs.exfat", "-L", label, str(path)])
    with (
        loop_device(path) as dev,
        tempfile.TemporaryDirectory(prefix="exfat-fill-") as tmp,
        fuse_exfat(dev, Path(tmp) / "mnt") as mnt,
    ):
        _fill(mnt, files)
    return path


def ext4_image(
    path: Path,
    files: Mapping[bytes, bytes],
    size_mb: int = 16,
    *,
    symlinks: Mapping[bytes, bytes] | None = None,
    fifos: Iterable[bytes] = (),
    device_nodes: Iterable[bytes] = (),
    label: str = "EVIDOCK",
) -> Path:
    """An ext4 image with ``files`` (any raw byte names), ``symlinks`` (path ->
    target), FIFOs and character device nodes (1:3, like /dev/null).

    Built with ``mke2fs -d`` from a staging folder, so no mount is needed to
    make it; mount it natively (``mount -o ro``, or through a driver on
    ``loop_device(path)``).
    """
    need("mke2fs")
    with tempfile.TemporaryDirectory(prefix="ext4-fill-") as tmp:
        stage = Path(tmp) / "root"
        stage.mkdir()
        _fill(stage, files)
        for rel, target in (symlinks or {}).items():
            _place(stage, rel).symlink_to(os.fsdecode(target))
        for rel in fifos:
            os.mkfifo(_place(stage, rel))
        for rel in device_nodes:
            os.mknod(_place(stage, rel), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        with path.open("wb") as f:
            f.truncate(size_mb << 20)
        run(["mke2fs", "-t", "ext4", "-q", "-F", "-L", label, "-d", str(stage), str(path)])
    return path


# -- footage ------------------------------------------------------------------------------


def ffmpeg_clip(path: Path, seconds: float = 2, size: str = "320x240") -> bytes:
    """A real H.264 MP4 clip (testsrc, 25 fps, libx264) written to ``path``; its bytes."""
    if not _have("ffmpeg"):
        if is_root():
            pytest.fail("ffmpeg missing; `./run test` installs it (TEST_DEBS)")
        pytest.skip("ffmpeg missing")
    run(
        [
            "ffmpeg", "-nostdin", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path),
        ]
    )  # fmt: skip
    return path.read_bytes()


def digest_fd(fd: int) -> tuple[str, int]:
    """SHA-256 hex and length of everything readable from ``fd``."""
    h, n = hashlib.sha256(), 0
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


# -- processes that speak lines ----------------------------------------------------------------


class Lines:
    """Line reader with time-outs over a child's stdout (bytes pipe), for talking to helpers."""

    def __init__(self, stream: IO[bytes], what: str) -> None:
        self.fd = stream.fileno()
        self.what = what
        self._buf = b""
        self.seen: list[str] = []

    def readline(self, timeout: float = 10.0) -> str:
        """The next line (without newline). AssertionError on time-out or end of output."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(
                    f"{self.what}: no line within {timeout} s; so far: {self.seen[-5:]}"
                )
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"{self.what}: output ended; so far: {self.seen[-5:]}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        text = line.decode("utf-8", "backslashreplace")
        self.seen.append(text)
        return text

    def expect(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Skip lines until one satisfies ``predicate``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(deadline - time.monotonic(), 0.0))
            if predicate(line):
                return line


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Close its stdin, wait, then terminate, then kill: never leaves it running."""
    if proc.stdin is not None and not proc.stdin.closed:
        with suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# -- udev ---------------------------------------------------------------------------------


class UdevTestbed:
    """A umockdev test bed (fake sysfs + udev uevents) for processes under test.

    Usage::

        with UdevTestbed() as bed, loop_device(image) as dev:
            proc = bed.popen([sys.executable, "my_listener.py"], stdout=subprocess.PIPE)
            bed.add("sdb1", devnode=dev, serial="CAM0001")    # "add" uevent
            ...
            bed.remove("sdb1")                                 # "remove" uevent

    The bed runs in a helper process (see the module docstring); the process
    under test gets ``bed.env()``. ``close()`` ends the helper, which deletes
    the bed's folder; processes still using it should be stopped first.
    """

    def __init__(self, python: str = DEBIAN_PYTHON) -> None:
        need("umockdev-wrapper", python, PRELOAD, "UMockdev-1.0.typelib", DEBIAN_GI)
        self._proc = subprocess.Popen(
            ["umockdev-wrapper", python, str(BED_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        self._out = Lines(self._proc.stdout, "umockdev bed")
        try:
            self.root = Path(self._out.readline(timeout=30))
            assert self.root.is_dir(), f"umockdev bed: {self.root} is not a folder"
        except BaseException:
            stop_process(self._proc)
            raise

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a process under test: ``base`` (default os.environ) plus the preload."""
        env = dict(os.environ if base is None else base)
        env["LD_PRELOAD"] = ":".join(p for p in (PRELOAD, env.get("LD_PRELOAD", "")) if p)
        env["UMOCKDEV_DIR"] = str(self.root)
        return env

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process under the bed (kwargs as for subprocess.Popen; ``env`` is extended)."""
        kwargs["env"] = self.env(kwargs.get("env"))
        return subprocess.Popen(list(argv), **kwargs)

    def _command(self, *words: str) -> str:
        assert self._proc.stdin is not None
        self._proc.stdin.write((shlex.join(words) + "\n").encode())
        self._proc.stdin.flush()
        reply = self._out.readline(timeout=10)
        if not reply.startswith("ok"):
            raise AssertionError(f"umockdev bed: {shlex.join(words)}: {reply}")
        return reply[2:].strip()

    def add(
        self,
        name: str,
        *,
        devnode: str,
        serial: str = "CAM0001",
        fs_type: str = "exfat",
        vendor_id: str = "2e8a",
        model_id: str = "0001",
        **properties: str,
    ) -> str:
        """A USB disk partition ``name`` whose DEVNAME is ``devnode`` (a real /dev/loopN, so it
        can really be mounted); emits "add". Extra udev ``properties`` (ID_FS_UUID=...,
        ID_VENDOR=...) go on the partition. Returns its syspath (/sys/devices/usb-NAME/NAME)."""
        extra = [f"{k}={v}" for k, v in properties.items()]
        return self._command("add", name, serial, devnode, fs_type, vendor_id, model_id, *extra)

    def uevent(self, name: str, action: str) -> None:
        self._command("uevent", name, action)

    def remove(self, name: str) -> None:
        """Emit "remove" for the partition and its USB device, then drop them from sysfs."""
        self._command("remove", name)

    def close(self) -> None:
        if self._proc.poll() is None and self._proc.stdin is not None:
            with suppress(OSError):
                self._proc.stdin.write(b"quit\n")
                self._proc.stdin.flush()
        stop_process(self._proc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "DEBIAN_PYTHON",
    "Lines",
    "UdevTestbed",
    "digest_fd",
    "exfat_image",
    "ext4_image",
    "ffmpeg_clip",
    "fuse_exfat",
    "fuse_pid",
    "is_root",
    "kill_fuse",
    "loop_device",
    "loop_devices_for",
    "mount_options",
    "mounts",
    "mounts_under",
    "need",
    "run",
    "sha256sum",
    "stop_process",
    "umount",
]
