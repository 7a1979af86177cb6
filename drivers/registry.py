"""Which driver classes exist (style.md 4): the built-ins named here, plus third-party
drivers declared in the ``evidock.drivers`` entry-point group.

A driver exists because it is listed, never because some module was imported.
Built-ins are named by module path and imported only when asked for, so
importing this module does not import pyudev, watchdog or ctypes.

A third-party distribution declares its driver in its metadata::

    [project.entry-points."evidock.drivers"]
    acme = "acme_evidock.driver:AcmeDriver"     # AcmeDriver.key == "acme"

The entry point's name must equal the class's ``key``. A third-party driver can
never take a built-in's key, and two distributions cannot claim one key: either
is a ConfigError naming both, since which code reads a camera must not depend on
installation order.

There is no "demo" driver: the demo camera (``drivers.demo.DemoCamera``) is a
folder offloaded by the folder driver, so the demo runs the path a dock runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping
from types import MappingProxyType

from hashing.errors import ConfigError

ENTRY_POINT_GROUP = "evidock.drivers"

BUILTIN: Mapping[str, str] = MappingProxyType(
    {
        "usb": "drivers.usb_storage:UsbStorageDriver",
        "gat947": "drivers.gat947:Gat947Driver",
        "folder": "drivers.folder:FolderDriver",
    }
)

# The Driver protocol's methods (drivers/base.py); checked on the class, since
# runtime_checkable protocols only check instances.
_METHODS = ("matches", "attach", "identify", "recordings", "open", "writable", "wipe")


def _load(target: str, source: str) -> object:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"driver {source}: {target!r} is not 'module:Class'")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as e:
        raise ConfigError(f"driver {source}: cannot load {target}: {e}") from e
    return obj


def _checked(key: str, obj: object, source: str) -> type:
    if not isinstance(obj, type):
        raise ConfigError(f"driver {source}: {obj!r} is not a class")
    declared = getattr(obj, "key", None)
    if declared != key:
        raise ConfigError(
            f"driver {source}: {obj.__qualname__}.key is {declared!r}, but it is registered "
            f"as {key!r}; the two must match"
        )
    missing = [m for m in _METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise ConfigError(
            f"driver {source}: {obj.__qualname__} lacks {', '.join(missing)} "
            "(see drivers/base.py, Driver)"
        )
    return obj


def _source(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = dist.name if dist is not None else "an unknown distribution"
    return f"{ep.name!r} ({ep.value}, from {name})"


def third_party() -> dict[str, importlib.metadata.EntryPoint]:
    """Entry points of the ``evidock.drivers`` group by key, not yet loaded.

    Raises ConfigError for a key claimed twice or a built-in's key.
    """
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN:
            raise ConfigError(
                f"driver {_source(ep)} uses the key of the built-in driver "
                f"{BUILTIN[ep.name]}; third-party drivers need a key of their own"
            )
        seen = found.get(ep.name)
        if seen is not None:
            if seen.value == ep.value:
                continue  # the same distribution visible twice on sys.path
            raise ConfigError(
                f"two drivers claim the key {ep.name!r}: {_source(seen)} and {_source(ep)}; "
                "uninstall one"
            )
        found[ep.name] = ep
    return found


def driver_class(key: str) -> type:
    """The driver class for ``key``, importing only its module. Raises ConfigError."""
    if key in BUILTIN:
        return _checked(key, _load(BUILTIN[key], f"{key!r} (built-in)"), f"{key!r} (built-in)")
    ep = third_party().get(key)
    if ep is None:
        known = ", ".join(sorted({*BUILTIN, *third_party()}))
        raise ConfigError(f"no recorder driver has the key {key!r} (known: {known})")
    return _checked(key, _load(ep.value, _source(ep)), _source(ep))


def driver_classes() -> dict[str, type]:
    """Every driver class, built-in and third-party, by key. Imports them all.

    Raises ConfigError (duplicate key, unloadable or malformed driver).
    """
    classes = {key: driver_class(key) for key in BUILTIN}
    for key, ep in third_party().items():
        classes[key] = _checked(key, _load(ep.value, _source(ep)), _source(ep))
    return classes
