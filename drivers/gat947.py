"""GA/T 947.4 body-worn cameras: identity, clock and disk mode through the vendor's library.

A camera built to GA/T 947.4 (单警执法视音频记录系统 第4部分: 数据接口) is not a
disk when it is plugged in: it is a USB device that only its maker's shared
library can talk to. The dock asks it, through that library, who it is and
who wears it, reads its clock, sets its clock, and switches it to mass-storage
mode with the administrator password. The camera then leaves the bus and comes
back as a USB disk, which the USB storage driver (``drivers.usb_storage``)
mounts and offloads. The identity read here is kept in an ``IdentityCache``
for that moment: the agent consults it when the disk appears.

The interface evidock expects of the vendor library
---------------------------------------------------

Vendors ship the standard's functions under these names, with the C calling
convention, plain ``char`` strings (GBK text), the administrator password as
``sPwd`` and a status code through ``int* iRet``. The return value is 1 on
success and 0 on failure (``BOOL``). These are the signatures evidock binds,
with explicit ``argtypes``/``restype`` (``Gat947Library``)::

    /* required */
    int  Init_Device(char *IDCode, int *iRet);      /* open the USB connection  */
    int  GetIDCode(char *IDCode, int *iRet);        /* maker + model code (生产厂代码及产品型号代码) */
    int  GetZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet);
    int  SyncDevTime(char *sPwd, int *iRet);        /* set the camera clock to the host's local time */
    int  SetMSDC(char *sPwd, int *iRet);            /* switch to mass-storage mode */
    /* optional: used when exported */
    int  ReadDevTime(char *sTime, char *sPwd, int *iRet);   /* see below */
    void UnInit_Device(int *iRet);                  /* release the connection */

    typedef struct {            /* byte arrays, no padding (every member is char) */
        char cSerial[8];        /* product serial, 7 characters, not empty   产品序号 */
        char userNo[7];         /* police number, 6 characters, not empty    警号 */
        char userName[33];      /* officer's name, 32 bytes of GBK           姓名 */
        char unitNo[13];        /* unit number, 12 characters                单位编号 */
        char unitName[33];      /* unit name, 32 bytes of GBK                单位名称 */
    } ZFY_INFO;                 /* 94 bytes */

    /* iRet values */
    CONNECT_SUCCESS = 1, CONNECT_FAILED = 2, CHECK_PWD_SUCCESS = 3,
    CHECK_PWD_FAILED = 4, SET_SYSTEMTIME_SUCCESS = 5, SET_SYSTEMTIME_FAILED = 6,
    MSDC_SUCCESS = 7, MSDC_FAILED = 8

The standard has no function that reads the camera's clock, and the dock must
know how far off it was *before* it syncs it (a clock fault is an anomaly,
regulation Art. 20 (1)). Vendors that offer a getter are expected to export it
as ``ReadDevTime``: it writes the device's local time, NUL-terminated, into a
buffer of at least 32 bytes, as ``YYYY-MM-DD hh:mm:ss`` (``YYYYMMDDhhmmss``
and ``YYYY/MM/DD hh:mm:ss`` are accepted too). A library without it still
works; the identity then has ``clock_offset_ms = None`` and says why in
``extra``. A vendor whose getter has another name or shape needs a small shim
library exporting this interface; evidock never guesses at signatures, since a
wrong guess through ctypes corrupts memory rather than raising.

``Init_Device``'s ``IDCode`` is an input in some vendors' headers (a model
filter) and an output in others: evidock passes an empty, writable buffer,
which means "any camera" to the first kind and room to write to the second.

How the buffers are made safe against vendor code: ``iRet`` is zeroed before
each call (some libraries write only 16 bits of it); string buffers are 256
bytes and zeroed; ``ZFY_INFO`` is followed by 256 spare bytes, so a library
built with a larger struct writes into slack, not into Python's heap. Each
field is read only up to its documented length and its first NUL.

Order of operations in ``Gat947Driver.prepare`` (all under one lock: the
standard's functions carry no device handle, so a library speaks to one camera
at a time): ``Init_Device``, ``GetIDCode``, ``GetZFYInfo`` (identity, checked
before anything on the camera changes), ``ReadDevTime`` (clock offset =
device - dock, taken before any sync), ``SyncDevTime``, ``SetMSDC`` (last: the
camera leaves the bus), then ``UnInit_Device`` if exported. The device prints
whole seconds, so the offset is good to about half a second plus half the
call's duration. A hung library call cannot be interrupted from Python; it
holds the lock, and so every other GA/T camera waits.

Limitation: because the functions carry no handle, the library, not evidock,
chooses which camera it talks to. With two cameras in SDK mode at once the
identity cannot be tied to the udev device that triggered ``prepare`` (both
are remembered under the recorder's own serial, so nothing is mixed up at the
disk stage, but the USB-serial alias may point at the other camera).

The administrator password is never shipped or defaulted, never logged and
never put into an exception message; it lives in a ``_Secret`` whose repr is
hidden and is passed to the library in a buffer wiped after each call (the
configured ``str`` itself cannot be scrubbed from Python's memory).
"""

from __future__ import annotations

import ctypes
import logging
import os
import stat
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, ClassVar

from drivers import _walk
from drivers.base import DeviceInfo, Driver, RecorderIdentity, Recording, Refused
from hashing.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

# iRet values (GA/T 947.4 vendor headers).
CONNECT_SUCCESS = 1
CONNECT_FAILED = 2
CHECK_PWD_SUCCESS = 3
CHECK_PWD_FAILED = 4
SET_SYSTEMTIME_SUCCESS = 5
SET_SYSTEMTIME_FAILED = 6
MSDC_SUCCESS = 7
MSDC_FAILED = 8

DEFAULT_SETTING_HINT = "the [gat947] password setting of /etc/evidock/evidock.toml"

_STRING_BUFFER = 256
_GUARD = 256

_FAILURES = {
    CONNECT_FAILED: "the recorder did not answer (连接失败); check the cable, that it is "
    "switched on and that it is not already in disk mode",
    CHECK_PWD_FAILED: "the recorder refused the administrator password (密码校验失败); "
    "set the recorder's administrator password in {setting}",
    SET_SYSTEMTIME_FAILED: "the recorder did not accept the time (时间同步失败)",
    MSDC_FAILED: "the recorder did not switch to disk mode (转换移动磁盘模式失败)",
}

# (field, length of its text without the NUL)
_ZFY_FIELDS = (("cSerial", 7), ("userNo", 6), ("userName", 32), ("unitNo", 12), ("unitName", 32))

_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y%m%d%H%M%S", "%Y/%m/%d %H:%M:%S")


class ZfyInfo(ctypes.Structure):
    """``ZFY_INFO``: each text plus its NUL; all ``char``, so no padding on any ABI."""

    _fields_ = [(name, ctypes.c_ubyte * (length + 1)) for name, length in _ZFY_FIELDS]


class _ZfyInfoSlack(ctypes.Structure):
    _fields_ = [("info", ZfyInfo), ("guard", ctypes.c_ubyte * _GUARD)]


_INT_P = ctypes.POINTER(ctypes.c_int)
_ZFY_P = ctypes.POINTER(ZfyInfo)
_REQUIRED: dict[str, tuple[list[Any], Any]] = {
    "Init_Device": ([ctypes.c_char_p, _INT_P], ctypes.c_int),
    "GetIDCode": ([ctypes.c_char_p, _INT_P], ctypes.c_int),
    "GetZFYInfo": ([_ZFY_P, ctypes.c_char_p, _INT_P], ctypes.c_int),
    "SyncDevTime": ([ctypes.c_char_p, _INT_P], ctypes.c_int),
    "SetMSDC": ([ctypes.c_char_p, _INT_P], ctypes.c_int),
}
_OPTIONAL: dict[str, tuple[list[Any], Any]] = {
    "ReadDevTime": ([ctypes.c_char_p, ctypes.c_char_p, _INT_P], ctypes.c_int),
    "UnInit_Device": ([_INT_P], None),
}

# The standard's functions take no device handle: one conversation at a time,
# across every library instance in the process.
_SDK_LOCK = threading.Lock()


class PasswordRefusedError(DeviceError):
    """The recorder refused the administrator password. Retrying with the same one is pointless
    and some recorders lock after a few attempts; the agent should not retry automatically."""


class _Secret:
    """The administrator password: bytes for the library, never shown."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__

    def buffer(self) -> ctypes.Array[ctypes.c_char]:
        return ctypes.create_string_buffer(self._value, len(self._value) + 1)


def _wipe(buf: ctypes.Array[ctypes.c_char]) -> None:
    ctypes.memset(buf, 0, ctypes.sizeof(buf))


def _secret(password: str | None, setting: str) -> _Secret | None:
    if password is None or password == "":
        return None
    if "\0" in password:
        raise ConfigError(
            "the GA/T 947.4 administrator password contains a NUL", hint=f"check {setting}"
        )
    try:
        return _Secret(password.encode("gbk"))
    except UnicodeEncodeError:
        # The error names the offending character: do not chain or repeat it.
        raise ConfigError(
            "the GA/T 947.4 administrator password cannot be written in GBK",
            hint=f"check {setting}",
        ) from None


@dataclass(frozen=True)
class ZfyFields:
    """The raw bytes of ``ZFY_INFO``, each cut at its length and its first NUL."""

    serial: bytes
    user_no: bytes
    user_name: bytes
    unit_no: bytes
    unit_name: bytes


class Gat947Library:
    """A vendor's GA/T 947.4 library loaded with ctypes, with the signatures above.

    Raises ConfigError when the file cannot be loaded or lacks a required function
    (checked at load, so a half-capable library never gets as far as changing a
    camera's clock). Calls raise DeviceError (``PasswordRefusedError`` for a refused
    password). Not thread-safe by itself: ``Gat947Driver`` serialises calls.
    """

    def __init__(self, path: Path, *, setting_hint: str = DEFAULT_SETTING_HINT) -> None:
        self.path = path
        self._setting = setting_hint
        if not path.is_absolute():
            # A bare name would make dlopen search the library path: load only what was named.
            raise ConfigError(f"GA/T 947.4 library {path}: give an absolute path")
        try:
            st = path.stat()
        except OSError as e:
            raise ConfigError(
                f"GA/T 947.4 library {path} not found ({e.strerror})",
                hint="install the vendor's SDK library and name it in the [gat947] library setting",
            ) from e
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"GA/T 947.4 library {path} is not a regular file")
        try:
            self._dll = ctypes.CDLL(os.fspath(path))
        except OSError as e:
            raise ConfigError(f"GA/T 947.4 library {path} cannot be loaded: {e}") from e
        self._fns: dict[str, Any] = {}
        for name, (argtypes, restype) in _REQUIRED.items():
            fn = self._lookup(name)
            if fn is None:
                raise ConfigError(
                    f"GA/T 947.4 library {path} does not export {name}(), which evidock needs; "
                    "ask the vendor for a library implementing GA/T 947.4, or a shim exporting "
                    "the interface in drivers/gat947.py"
                )
            fn.argtypes, fn.restype = argtypes, restype
            self._fns[name] = fn
        for name, (argtypes, restype) in _OPTIONAL.items():
            fn = self._lookup(name)
            if fn is not None:
                fn.argtypes, fn.restype = argtypes, restype
                self._fns[name] = fn

    def _lookup(self, name: str) -> Any:
        try:
            return getattr(self._dll, name)
        except AttributeError:
            return None

    @property
    def has_clock(self) -> bool:
        return "ReadDevTime" in self._fns

    def __repr__(self) -> str:
        return f"Gat947Library({str(self.path)!r})"

    # -- calls ---------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> int:
        """Call ``name(*args, &iRet)``; return iRet, or raise DeviceError naming the failure."""
        iret = ctypes.c_int(0)
        ok = self._fns[name](*args, ctypes.byref(iret))
        code = iret.value
        if ok and code not in _FAILURES:
            return code
        why = _FAILURES.get(code)
        if why is None:
            why = f"failed (returned {ok}, iRet {code})"
        message = f"GA/T 947.4 {name}: {why.format(setting=self._setting)}"
        if code == CHECK_PWD_FAILED:
            raise PasswordRefusedError(message)
        raise DeviceError(message)

    def _text_call(self, name: str) -> str:
        buf = ctypes.create_string_buffer(_STRING_BUFFER)
        self._call(name, buf)
        return _ascii(buf.raw[: _STRING_BUFFER - 1].split(b"\0", 1)[0])

    def init_device(self) -> str:
        """Open the connection; returns the id code the library wrote back, if any."""
        return self._text_call("Init_Device")

    def get_id_code(self) -> str:
        return self._text_call("GetIDCode")

    def get_zfy_info(self, password: _Secret) -> ZfyFields:
        slack = _ZfyInfoSlack()
        pwd = password.buffer()
        try:
            self._call("GetZFYInfo", ctypes.byref(slack.info), pwd)
        finally:
            _wipe(pwd)
        raw = [
            bytes(getattr(slack.info, name))[:length].split(b"\0", 1)[0]
            for name, length in _ZFY_FIELDS
        ]
        return ZfyFields(*raw)

    def read_dev_time(self, password: _Secret) -> tuple[str, int]:
        """The device's local time as it printed it, and the dock's time (ns) at the reading."""
        buf = ctypes.create_string_buffer(_STRING_BUFFER)
        pwd = password.buffer()
        try:
            before = time.time_ns()
            self._call("ReadDevTime", buf, pwd)
            after = time.time_ns()
        finally:
            _wipe(pwd)
        return _ascii(buf.raw[: _STRING_BUFFER - 1].split(b"\0", 1)[0]), (before + after) // 2

    def _password_call(self, name: str, password: _Secret) -> None:
        pwd = password.buffer()
        try:
            self._call(name, pwd)
        finally:
            _wipe(pwd)

    def sync_dev_time(self, password: _Secret) -> None:
        self._password_call("SyncDevTime", password)

    def set_msdc(self, password: _Secret) -> None:
        self._password_call("SetMSDC", password)

    def uninit_device(self) -> None:
        """Release the connection if the library can; never raises."""
        fn = self._fns.get("UnInit_Device")
        if fn is not None:
            iret = ctypes.c_int(0)
            fn(ctypes.byref(iret))


def _ascii(data: bytes) -> str:
    return data.decode("ascii", "replace").strip()


def decode_field(raw: bytes) -> tuple[str, bool]:
    """GBK text from the recorder: (text, clean). Undecodable bytes and control characters
    become U+FFFD and make ``clean`` false, so the caller keeps the raw bytes as hex."""
    try:
        text = raw.decode("gbk")
        clean = True
    except UnicodeDecodeError:
        text = raw.decode("gbk", "replace")
        clean = False
    if any(unicodedata.category(c) == "Cc" for c in text):
        text = "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in text)
        clean = False
    return text.strip(), clean


def parse_device_time(text: str, tz: tzinfo | None = None) -> datetime:
    """The device's local time string as an aware datetime (``tz`` or the dock's zone).

    Raises ValueError if it matches none of the accepted forms.
    """
    for fmt in _TIME_FORMATS:
        try:
            naive = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return naive.astimezone() if tz is None else naive.replace(tzinfo=tz)
    raise ValueError(f"unrecognised device time {text!r}")


class IdentityCache:
    """Identities read in SDK mode, kept until the same camera shows up as a disk.

    Keyed by the recorder's serial and by any alias given (the USB serial of the
    SDK-mode device, which the re-enumerated disk normally carries too); keys are
    compared case-insensitively. Entries expire after ``ttl_s`` so a camera that
    never came back as a disk cannot lend its identity to a later one. Thread-safe.
    """

    def __init__(self, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, RecorderIdentity]] = {}

    @staticmethod
    def _key(serial: str) -> str:
        return serial.strip().casefold()

    def remember(self, identity: RecorderIdentity, *aliases: str | None) -> None:
        expires = self._clock() + self.ttl_s
        with self._lock:
            for key in (identity.serial, *aliases):
                if key and key.strip():
                    self._items[self._key(key)] = (expires, identity)

    def _purge(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._items.items() if expires <= now]:
            del self._items[key]

    def lookup(self, serial: str | None) -> RecorderIdentity | None:
        """The identity remembered under ``serial``, if not expired."""
        if not serial:
            return None
        with self._lock:
            self._purge(self._clock())
            item = self._items.get(self._key(serial))
            return item[1] if item else None

    def take(self, serial: str | None) -> RecorderIdentity | None:
        """Like ``lookup``, and forget the identity under all its keys."""
        with self._lock:
            self._purge(self._clock())
            item = self._items.get(self._key(serial)) if serial else None
            if item is None:
                return None
            for key in [k for k, (_, ident) in self._items.items() if ident is item[1]]:
                del self._items[key]
            return item[1]

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len({id(ident) for _, ident in self._items.values()})


def _usb_id(text: str) -> tuple[str, str]:
    vid, sep, pid = text.strip().lower().partition(":")
    if not sep or len(vid) != 4 or len(pid) != 4:
        raise ConfigError(f"USB id {text!r}: write it as vvvv:pppp in hex, e.g. 1234:5678")
    try:
        int(vid, 16)
        int(pid, 16)
    except ValueError:
        raise ConfigError(f"USB id {text!r}: write it as vvvv:pppp in hex") from None
    return vid, pid


class Gat947Driver:
    """GA/T 947.4 recorders, from their SDK-mode USB device up to the switch to disk mode.

    ``matches`` picks the camera's USB device (subsystem ``usb``) by the vendor and
    product ids in ``usb_ids`` ("vvvv:pppp"); before disk mode the camera is not a
    disk, so no other driver claims it. ``prepare`` reads identity and clock, syncs
    the clock and switches to disk mode, and remembers the identity in ``cache``.

    In disk mode the USB storage driver mounts the camera: ``attach`` and
    ``writable`` delegate to the driver made by ``usb_driver_factory`` (only its
    ``Driver`` interface is used), ``identify`` answers from the cache, and
    ``recordings``/``open``/``wipe`` work on the mounted root through
    ``drivers._walk``.

    The library is loaded on first use, so a dock without GA/T cameras never
    loads vendor code.
    """

    key: ClassVar[str] = "gat947"

    def __init__(
        self,
        library: Path,
        password: str | None,
        *,
        usb_ids: Iterable[str] = (),
        usb_driver_factory: Callable[[], Driver] | None = None,
        cache: IdentityCache | None = None,
        device_tz: tzinfo | None = None,
        setting_hint: str = DEFAULT_SETTING_HINT,
    ) -> None:
        self.library_path = library
        self._setting = setting_hint
        self._password = _secret(password, setting_hint)
        self.usb_ids = frozenset(_usb_id(u) for u in usb_ids)
        self.cache = cache if cache is not None else IdentityCache()
        self.device_tz = device_tz
        self._usb_driver_factory = usb_driver_factory
        self._usb_driver: Driver | None = None
        self._lib: Gat947Library | None = None

    def __repr__(self) -> str:
        return f"Gat947Driver(library={str(self.library_path)!r}, password=<hidden>)"

    def library(self) -> Gat947Library:
        """The vendor library, loaded once. Raises ConfigError."""
        if self._lib is None:
            self._lib = Gat947Library(self.library_path, setting_hint=self._setting)
        return self._lib

    # -- SDK mode --------------------------------------------------------------

    def matches(self, device: DeviceInfo) -> bool:
        if device.subsystem != "usb" or device.prop("DEVTYPE") not in (None, "usb_device"):
            return False
        vid = device.vendor_id or device.attr("idVendor")
        pid = device.model_id or device.attr("idProduct")
        return vid is not None and pid is not None and (vid.lower(), pid.lower()) in self.usb_ids

    def prepare(self, device: DeviceInfo) -> RecorderIdentity:
        """Identify the camera, measure and sync its clock, switch it to disk mode.

        Returns the identity (also remembered in ``cache`` under the recorder's serial
        and the USB serial of ``device``). Raises ConfigError (no password, library
        unusable), PasswordRefusedError, DeviceError.
        """
        if self._password is None:
            raise ConfigError(
                "no GA/T 947.4 administrator password is configured, so the recorder cannot "
                "be switched to disk mode",
                hint=f"set it in {self._setting} (keep that file "
                "readable by root only). evidock ships no default password.",
            )
        lib = self.library()
        password = self._password
        with _SDK_LOCK:
            try:
                init_code = lib.init_device()
                id_code = lib.get_id_code()
                identity = self._identity(device, id_code or init_code, lib.get_zfy_info(password))
                identity = self._with_clock(identity, lib, password)
                lib.sync_dev_time(password)
                lib.set_msdc(password)
            finally:
                lib.uninit_device()
        log.info(
            "GA/T 947.4 recorder %s (officer %s): clock offset %s ms before sync; switched "
            "to disk mode",
            identity.serial,
            identity.officer,
            identity.clock_offset_ms,
        )
        self.cache.remember(identity, device.serial)
        return identity

    def _identity(self, device: DeviceInfo, id_code: str, fields: ZfyFields) -> RecorderIdentity:
        extra: list[tuple[str, str]] = []
        if id_code:
            extra.append(("id_code", id_code))
        if device.serial:
            extra.append(("usb_serial", device.serial))
        values: dict[str, str | None] = {}
        for name, raw in (
            ("serial", fields.serial),
            ("officer", fields.user_no),
            ("officer_name", fields.user_name),
            ("unit_no", fields.unit_no),
            ("unit_name", fields.unit_name),
        ):
            text, clean = decode_field(raw)
            if not clean:
                extra.append((f"{name}_hex", raw.hex()))
                if name == "serial":
                    text = "hex:" + raw.hex()  # a key must not collide via U+FFFD
            values[name] = text or None
        serial = values["serial"]
        if not serial:
            raise DeviceError("GA/T 947.4 GetZFYInfo: the recorder reported no serial (cSerial)")
        return RecorderIdentity(
            driver=self.key,
            serial=serial,
            vendor=device.vendor,
            model=device.model,
            officer=values["officer"],
            officer_name=values["officer_name"],
            unit_no=values["unit_no"],
            unit_name=values["unit_name"],
            extra=tuple(extra),
        )

    def _with_clock(
        self, identity: RecorderIdentity, lib: Gat947Library, password: _Secret
    ) -> RecorderIdentity:
        if not lib.has_clock:
            log.warning(
                "GA/T 947.4 library %s exports no ReadDevTime: the clock of recorder %s is "
                "synced without measuring its offset",
                lib.path,
                identity.serial,
            )
            return replace(identity, extra=(*identity.extra, ("clock", "no ReadDevTime")))
        try:
            text, dock_ns = lib.read_dev_time(password)
        except PasswordRefusedError:
            raise
        except DeviceError as e:
            log.warning("recorder %s: clock unreadable: %s", identity.serial, e)
            return replace(identity, extra=(*identity.extra, ("clock", f"unreadable: {e}")))
        extra = (*identity.extra, ("device_time", text))
        try:
            device = parse_device_time(text, self.device_tz)
        except ValueError:
            log.warning("recorder %s: unrecognised device time %r", identity.serial, text)
            return replace(identity, extra=(*extra, ("clock", "unrecognised")))
        # The device prints whole seconds: take the middle of its second (error <= 0.5 s
        # plus half the call's duration).
        device_ms = int(device.timestamp()) * 1000 + 500
        offset = device_ms - dock_ns // 1_000_000
        return replace(identity, clock_offset_ms=offset, extra=extra)

    # -- disk mode -------------------------------------------------------------

    def _usb(self) -> Driver:
        if self._usb_driver is None:
            if self._usb_driver_factory is None:
                raise DeviceError(
                    "a GA/T 947.4 recorder in disk mode is mounted by the USB storage driver; "
                    "none was given to the gat947 driver"
                )
            self._usb_driver = self._usb_driver_factory()
        return self._usb_driver

    def attach(self, device: DeviceInfo) -> AbstractContextManager[Path]:
        """Mount the camera's disk through the USB storage driver."""
        return self._usb().attach(device)

    def identify(self, device: DeviceInfo, root: Path) -> RecorderIdentity:
        """The identity ``prepare`` remembered for this disk's serial. Raises DeviceError."""
        identity = self.cache.lookup(device.serial)
        if identity is None:
            raise DeviceError(
                f"{device.sys_path}: no GA/T 947.4 identity remembered for serial "
                f"{device.serial!r}; was the recorder prepared in SDK mode?"
            )
        return identity

    def recordings(self, root: Path) -> Iterator[Recording | Refused]:
        return _walk.walk(root)

    def open(self, root: Path, recording: Recording) -> int:
        return _walk.open_file(root, recording.relpath)

    def writable(self, device: DeviceInfo, root: Path) -> AbstractContextManager[Path]:
        return self._usb().writable(device, root)

    def wipe(self, root: Path, recording: Recording) -> None:
        _walk.unlink_file(root, recording.relpath)
