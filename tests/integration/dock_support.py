"""The dock end to end, for tests/integration/test_dock_e2e.py: a station on disk, its
config file, `evidock agent` as a real process under a umockdev test bed, camera
images on loop devices, and the ledger read back without evidock's own code.

``Rig`` owns everything a test starts (agent processes, loop devices, mounts,
the udev bed) and ``close()`` ends all of it in reverse order, whatever state a
failed test left behind: agents killed, every mount under the test's folder
unmounted (lazily if busy, which also ends its FUSE helper), loop devices of the
test's images detached, the bed closed. It then insists nothing leaked.

Footage is real H.264 (ffmpeg), each clip made distinct by its title tag, so no
two recordings on any camera share a digest (the ledger records a digest once).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.integration.hardware import (
    UdevTestbed,
    loop_devices_for,
    mounts_under,
    run,
)

AGENT_ARGV = [sys.executable, "-m", "agent.cli", "agent", "--verbose"]
CLI_ARGV = [sys.executable, "-m", "agent.cli"]
STATION_ID = "dock-e2e"
MEDIA = "DCIM/100MEDIA"
HEX64 = frozenset("0123456789abcdef")


def require(condition: bool, message: str) -> None:
    """An assertion that survives ``python -O`` and names what a regression broke."""
    if not condition:
        raise AssertionError(message)


# -- footage ------------------------------------------------------------------------------


def clip_name(serial: str, start: datetime, number: int) -> str:
    """``<SERIAL>_<YYYYMMDDhhmmss>_<NNNN>.MP4``, as body-worn cameras name their clips."""
    return f"{serial}_{start:%Y%m%d%H%M%S}_{number:04d}.MP4"


class Footage:
    """Real H.264 clips made once per test module and reused (ffmpeg costs ~0.2 s a clip)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._made: dict[str, bytes] = {}

    def clip(self, title: str, seconds: int = 1, size: str = "320x240") -> bytes:
        """A clip of ``seconds`` whose bytes are unique to ``title`` (a metadata tag)."""
        key = f"{title}-{seconds}-{size}"
        if key not in self._made:
            path = self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.mp4"
            run(
                [
                    "ffmpeg", "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25",
                    "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", "-metadata", f"title={title}",
                    "-movflags", "+faststart", str(path),
                ]
            )  # fmt: skip
            self._made[key] = path.read_bytes()
        return self._made[key]

    def camera(
        self,
        serial: str,
        start: datetime,
        count: int,
        *,
        first: int = 1,
        seconds: int = 1,
    ) -> dict[bytes, bytes]:
        """``count`` consecutive clips of one camera under DCIM/100MEDIA: raw path -> bytes.

        Clip ``n`` starts where clip ``n - 1`` ended, so the story finds no hole.
        """
        files: dict[bytes, bytes] = {}
        for i in range(count):
            when = start + timedelta(seconds=i * seconds)
            name = clip_name(serial, when, first + i)
            files[f"{MEDIA}/{name}".encode()] = self.clip(f"{serial}#{first + i}", seconds)
        return files


def random_bytes(size: int, seed: int) -> bytes:
    """``size`` seeded pseudo-random bytes (a 'recording' nothing can compress or probe)."""
    rng = random.Random(seed)
    step = 1 << 20
    return b"".join(rng.randbytes(min(step, size - pos)) for pos in range(0, size, step))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- the ledger, read with sqlite3 and json only -------------------------------------------


def entries(home: Path) -> list[dict[str, Any]]:
    """Every ledger entry as parsed JSON, in order (safe while the agent writes: WAL)."""
    conn = sqlite3.connect(home / "ledger.db", timeout=30)
    try:
        rows = conn.execute("SELECT seq, data FROM entries ORDER BY seq").fetchall()
    finally:
        conn.close()
    out = []
    for seq, data in rows:
        entry = json.loads(bytes(data))
        assert entry["seq"] == seq, f"entry {seq} says seq {entry['seq']}"
        out.append(entry)
    return out


def of_type(home: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in entries(home) if e["type"] == kind]


def checkpoint_sizes(home: Path) -> list[int]:
    conn = sqlite3.connect(home / "ledger.db", timeout=30)
    try:
        return [int(r[0]) for r in conn.execute("SELECT size FROM checkpoints ORDER BY size")]
    finally:
        conn.close()


def stored(home: Path) -> dict[str, Path]:
    """Everything in the store (any name at any depth), by file name."""
    root = home / "store"
    return {p.name: p for p in root.rglob("*") if not p.is_dir()}


def staging_parts(home: Path) -> list[Path]:
    return sorted((home / "staging").glob("*"))


def assert_store_matches_ledger(home: Path) -> list[dict[str, Any]]:
    """The store holds exactly the ingested digests, under 64-hex names at store/ab/cd/,
    each recorded once; returns the ingest entries."""
    ingests = of_type(home, "ingest")
    shas = [e["body"]["sha256"] for e in ingests]
    assert len(shas) == len(set(shas)), f"a digest ingested twice: {shas}"
    files = stored(home)
    for name, path in files.items():
        assert len(name) == 64 and set(name) <= HEX64, f"not a digest in the store: {path}"
        assert path.relative_to(home / "store").parts == (name[:2], name[2:4], name), path
        assert sha256_hex(path.read_bytes()) == name, f"{path} does not hash to its name"
    assert set(files) == set(shas), (
        f"store and ledger differ: only stored {sorted(set(files) - set(shas))}, "
        f"only in the ledger {sorted(set(shas) - set(files))}"
    )
    return ingests


# -- the agent as a process ------------------------------------------------------------------


@dataclass
class Agent:
    """One `evidock agent` process; its stdout and stderr go to ``log``."""

    proc: subprocess.Popen[bytes]
    home: Path
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def status_path(self) -> Path:
        return self.home / "status.json"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def status(self) -> dict[str, Any] | None:
        """status.json as the agent last wrote it, if it is ours (this pid)."""
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("pid") != self.proc.pid:
            return None
        return data

    def wait_status(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Poll status.json until ``predicate`` holds; AssertionError naming ``what`` after
        ``timeout`` or if the agent dies, with the last status and the agent's log."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            last = self.status() or last
            if last is not None and predicate(last):
                return last
            if not self.alive():
                raise AssertionError(
                    f"agent exited ({self.proc.returncode}) while waiting for {what}; "
                    f"last status {json.dumps(last)}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {what} within {timeout} s; last status {json.dumps(last, indent=1)}\n"
                    f"agent log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def terminate(self, timeout: float = 20.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took). AssertionError if it does not exit."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"agent ignored SIGTERM for {timeout} s\n{self.log_tail()}"
            ) from None
        return code, time.monotonic() - started

    def crash(self, timeout: float = 10.0) -> None:
        """SIGKILL the agent process alone, as the OOM killer or a segfault would. What it
        was running (mount, umount, a probe) finishes on its own and is waited for; a
        FUSE helper it started keeps serving its mount, now stale."""
        with suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while left := group_members(self.proc.pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"the killed agent's children did not finish: {left}")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL the agent and whatever it runs in its process group (mount, umount, a
        probe); a FUSE helper it started has its own session and survives, holding its
        mount, as it would after a crash."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(proc.name))
    return found


def sessions(status: Mapping[str, Any], serial: str | None = None) -> list[dict[str, Any]]:
    found = [s for s in status.get("sessions", []) if isinstance(s, dict)]
    return [s for s in found if serial is None or s.get("serial") == serial]


def committed(serial: str) -> Callable[[dict[str, Any]], bool]:
    """Predicate: the recorder ``serial`` has a finished, committed, safe-to-unplug session."""

    def check(status: dict[str, Any]) -> bool:
        return any(
            s["state"] == "committed" and s["safe_to_unplug"] and s["finished"]
            for s in sessions(status, serial)
        )

    return check


# -- the rig ------------------------------------------------------------------------------------


@dataclass
class Plugged:
    """A camera image on a loop device, announced to the bed under ``name``."""

    name: str
    image: Path
    devnode: str
    serial: str
    syspath: str
    present: bool = True


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


class Rig:
    """A station, its config, and whatever a test starts; ``close()`` cleans all of it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.mount_root = tmp / "mnt"
        self.config = tmp / "evidock.toml"
        self.agents: list[Agent] = []
        self.plugged: list[Plugged] = []
        self.images: list[Path] = []
        self._bed: UdevTestbed | None = None
        self._names = 0

    # -- setup --

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["EVIDOCK_HOME"] = str(self.home)
        env["EVIDOCK_CONFIG"] = str(self.config)
        env.pop("LD_PRELOAD", None)
        env.pop("UMOCKDEV_DIR", None)
        return env

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`evidock ARGS` as a separate process (no preload), with this rig's home and config."""
        return subprocess.run(
            [*CLI_ARGV, *args],
            env=self.env(),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def init_station(self) -> None:
        result = self.cli("init", "--station-id", STATION_ID)
        assert result.returncode == 0, result.stderr

    def configure(self, **sections: Mapping[str, object]) -> None:
        """Write the config file: [usb] with this rig's mount_root and a DCIM rule, a short
        checkpoint interval, no free-space margin, plus ``sections`` (merged per section)."""
        values: dict[str, dict[str, object]] = {
            "checkpoint": {"interval_s": 1},
            "offload": {"wipe": "never", "free_margin_mb": 0},
            # The rig's platform, when a test gives it one, is mosquitto + `evidock receive`.
            "upload": {"broker": "mosquitto"},
            "usb": {
                "enabled": True,
                "mount_root": str(self.mount_root),
                "rules": [{"layout": "DCIM"}],
            },
        }
        for section, table in sections.items():
            values.setdefault(section, {}).update(table)
        text = "".join(
            f"[{section}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()) + "\n"
            for section, table in values.items()
        )
        self.config.write_text(text, encoding="utf-8")

    @property
    def bed(self) -> UdevTestbed:
        if self._bed is None:
            self._bed = UdevTestbed()
        return self._bed

    # -- processes --

    def start_agent(self, *, udev: bool = True, wait: bool = True) -> Agent:
        """`evidock agent` in its own process group, under the bed's preload when ``udev``;
        with ``wait``, returns once it has written its first status.json."""
        log = self.tmp / f"agent-{len(self.agents) + 1}.log"
        with log.open("wb") as out:
            argv = list(AGENT_ARGV)
            kwargs: dict[str, Any] = {
                "env": self.env(),
                "cwd": self.tmp,
                "stdin": subprocess.DEVNULL,
                "stdout": out,
                "stderr": subprocess.STDOUT,
                "start_new_session": True,
            }
            proc = self.bed.popen(argv, **kwargs) if udev else subprocess.Popen(argv, **kwargs)
        agent = Agent(proc, self.home, log)
        self.agents.append(agent)
        if wait:
            agent.wait_status(lambda s: True, "the agent's first status.json", timeout=30)
        return agent

    # -- cameras --

    def plug(self, image: Path, serial: str, *, name: str | None = None) -> Plugged:
        """Attach ``image`` to a new loop device and announce it as USB disk ``name``."""
        if image not in self.images:
            self.images.append(image)
        self._names += 1
        name = name or f"sd{chr(ord('a') + self._names)}1"
        devnode = run(["losetup", "--find", "--show", str(image)]).strip()
        plugged = Plugged(name, image, devnode, serial, "")
        self.plugged.append(plugged)
        plugged.syspath = self.bed.add(name, devnode=devnode, serial=serial)
        return plugged

    def unplug(self, plugged: Plugged) -> None:
        """The udev "remove" (the loop device stays until ``detach``)."""
        if plugged.present:
            plugged.present = False
            self.bed.remove(plugged.name)

    def detach(self, plugged: Plugged) -> None:
        subprocess.run(["losetup", "--detach", plugged.devnode], capture_output=True, check=False)

    def mounts(self) -> list[str]:
        return mounts_under(self.mount_root) if self.mount_root.exists() else []

    # -- teardown --

    def close(self) -> None:
        """Kill agents, unmount, detach, close the bed; then AssertionError if anything leaked."""
        for agent in self.agents:
            agent.kill()
        for _ in range(3):  # stacked mounts need one unmount each
            for mp in reversed(mounts_under(self.tmp)):
                if subprocess.run(["umount", mp], capture_output=True, check=False).returncode:
                    subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
        for plugged in self.plugged:
            self.detach(plugged)
        if self._bed is not None:
            self._bed.close()
        leaked_mounts = mounts_under(self.tmp)
        leaked_loops = [dev for image in self.images for dev in _wait_detached(image)]
        assert not leaked_mounts, f"left mounted: {leaked_mounts}"
        assert not leaked_loops, f"loop devices left attached: {leaked_loops}"


def _wait_detached(image: Path, timeout: float = 5.0) -> list[str]:
    """Loop devices still backed by ``image`` once autoclear had ``timeout`` to act."""
    deadline = time.monotonic() + timeout
    while True:
        left = loop_devices_for(image)
        if not left or time.monotonic() > deadline:
            return left
        for dev in left:
            subprocess.run(["losetup", "--detach", dev], capture_output=True, check=False)
        time.sleep(0.1)


def read_back(image: Path, folder: Path) -> dict[bytes, str]:
    """Every regular file of an exFAT image, read through a fresh read-only mount (its own
    read-only loop device), hashed with coreutils' sha256sum: raw relpath -> hex digest."""
    folder.mkdir(parents=True, exist_ok=True)
    dev = run(["losetup", "--find", "--show", "--read-only", str(image)]).strip()
    try:
        run(["mount.exfat-fuse", "-o", "ro", dev, str(folder)])
        try:
            out: dict[bytes, str] = {}
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    digest = run(["sha256sum", "--", str(path)]).split()[0]
                    out[os.fsencode(path.relative_to(folder))] = digest
            return out
        finally:
            run(["umount", str(folder)])
    finally:
        subprocess.run(["losetup", "--detach", dev], capture_output=True, check=False)
