"""The driver registry: built-ins by module path, third-party drivers from entry points."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from drivers import registry
from drivers.folder import FolderDriver
from drivers.gat947 import Gat947Driver
from drivers.registry import ENTRY_POINT_GROUP, driver_class, driver_classes
from hashing.errors import ConfigError

ACME = textwrap.dedent(
    """
    from contextlib import nullcontext

    class AcmeDriver:
        key = "acme"
        def matches(self, device): return False
        def attach(self, device): return nullcontext(None)
        def identify(self, device, root): raise NotImplementedError
        def recordings(self, root): return iter(())
        def open(self, root, recording): raise NotImplementedError
        def writable(self, device, root): return nullcontext(root)
        def wipe(self, root, recording): raise NotImplementedError

    class Keyless:
        def matches(self, device): return False

    NOT_A_CLASS = 42
    """
)


def distribution(site: Path, name: str, entries: dict[str, str]) -> None:
    """A minimal installed distribution: a dist-info with entry points, as pip leaves it."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_evidock_driver.py").write_text(ACME)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_importing_the_registry_imports_no_driver() -> None:
    code = (
        "import sys, drivers.registry as r; "
        "print(sorted(m for m in ('pyudev', 'watchdog', 'ctypes', 'cv2', 'drivers.folder', "
        "'drivers.gat947', 'drivers.usb_storage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_builtins() -> None:
    assert set(registry.BUILTIN) == {"usb", "gat947", "folder"}
    assert driver_class("gat947") is Gat947Driver
    assert driver_class("folder") is FolderDriver
    classes = driver_classes()
    assert {k: c.key for k, c in classes.items()} == {k: k for k in classes}  # type: ignore[attr-defined]
    assert classes["usb"].__name__ == "UsbStorageDriver"


def test_third_party_driver_is_discovered(site: Path) -> None:
    distribution(site, "acme_evidock", {"acme": "acme_evidock_driver:AcmeDriver"})
    classes = driver_classes()
    assert classes["acme"].__module__ == "acme_evidock_driver"
    assert driver_class("acme") is classes["acme"]
    assert set(classes) == {"usb", "gat947", "folder", "acme"}


def test_duplicate_key_names_both(site: Path) -> None:
    distribution(site, "acme_evidock", {"acme": "acme_evidock_driver:AcmeDriver"})
    distribution(site, "rival_evidock", {"acme": "rival:Driver"})
    with pytest.raises(ConfigError, match="two drivers claim the key 'acme'") as info:
        driver_classes()
    assert "acme_evidock" in str(info.value)
    assert "rival_evidock" in str(info.value)


def test_same_entry_point_seen_twice_is_not_a_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = importlib.metadata.EntryPoint("acme", "acme:Driver", ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep, ep])
    assert registry.third_party() == {"acme": ep}


def test_third_party_cannot_take_a_builtin_key(site: Path) -> None:
    distribution(site, "usurper", {"usb": "acme_evidock_driver:AcmeDriver"})
    with pytest.raises(ConfigError, match="key of the built-in driver"):
        driver_classes()


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        ("acme_evidock_driver:Keyless", "key is None, but it is registered as 'odd'"),
        ("acme_evidock_driver:NOT_A_CLASS", "is not a class"),
        ("acme_evidock_driver:Missing", "cannot load"),
        ("no_such_module_anywhere:Driver", "cannot load"),
        ("acme_evidock_driver", "is not 'module:Class'"),
    ],
)
def test_malformed_third_party_drivers(site: Path, target: str, complaint: str) -> None:
    distribution(site, "odd_evidock", {"odd": target})
    with pytest.raises(ConfigError, match=complaint):
        driver_class("odd")


def test_a_driver_lacking_methods_is_refused(site: Path) -> None:
    (site / "half_driver.py").write_text("class Half:\n    key = 'half'\n")
    distribution(site, "half_evidock", {"half": "half_driver:Half"})
    with pytest.raises(ConfigError, match="lacks matches, attach"):
        driver_class("half")


def test_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"no recorder driver has the key 'nope' \(known: "):
        driver_class("nope")
