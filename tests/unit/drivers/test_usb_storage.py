"""UsbStorageDriver on plain DeviceInfo values: which USB disks match, which files are
recordings, who the recorder is, and how rules are parsed from the configuration.

Mounting is tested for real in tests/integration/test_usb_storage.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import _mount
from drivers.base import DeviceInfo, Driver, Recording
from drivers.usb_storage import DEFAULT_EXTENSIONS, MatchRule, UsbStorageDriver
from hashing.errors import ConfigError, DeviceError


def disk(
    props: dict[str, str] | None = None,
    attrs: dict[str, str] | None = None,
    *,
    subsystem: str = "block",
    devnode: str | None = "/dev/sdb1",
    drop: tuple[str, ...] = (),
) -> DeviceInfo:
    base = {
        "ID_BUS": "usb",
        "ID_FS_TYPE": "exfat",
        "ID_FS_USAGE": "filesystem",
        "DEVTYPE": "partition",
        "ID_SERIAL_SHORT": "CAM0001",
        "ID_VENDOR_ID": "2e8a",
        "ID_MODEL_ID": "00c1",
        "ID_VENDOR": "Evidock",
        "ID_MODEL": "BodyCam_X1",
    }
    merged = {k: v for k, v in (base | (props or {})).items() if k not in drop}
    return DeviceInfo.make(subsystem, "/sys/devices/usb1/1-1/sdb/sdb1", devnode, merged, attrs)


def driver(*rules: MatchRule) -> UsbStorageDriver:
    return UsbStorageDriver(rules or (MatchRule(),), Path("/nonexistent/mnt"))


def test_is_a_driver() -> None:
    assert isinstance(driver(), Driver)
    assert UsbStorageDriver.key == "usb"


# -- which devices ---------------------------------------------------------------------


def test_default_rule_takes_any_usb_disk_with_a_recorder_filesystem() -> None:
    d = driver()
    assert d.matches(disk())
    for fs in ("vfat", "exfat", "ntfs", "ext4"):
        assert d.matches(disk({"ID_FS_TYPE": fs}))
    assert d.matches(disk({"DEVTYPE": "disk"}))  # a "superfloppy" without partitions
    assert d.matches(disk(drop=("ID_FS_USAGE",)))


@pytest.mark.parametrize(
    ("device", "why"),
    [
        (disk({"ID_BUS": "ata"}), "not on USB"),
        (disk(drop=("ID_BUS",)), "bus unknown"),
        (disk(drop=("ID_FS_TYPE",)), "no filesystem (e.g. the whole partitioned disk)"),
        (disk({"ID_FS_TYPE": "btrfs"}), "not a recorder filesystem"),
        (disk({"ID_FS_TYPE": "squashfs"}), "not a recorder filesystem"),
        (disk({"ID_FS_TYPE": "crypto_LUKS", "ID_FS_USAGE": "crypto"}), "encrypted"),
        (disk({"ID_FS_USAGE": "raid"}), "a RAID member"),
        (disk(subsystem="folder"), "not a block device"),
        (disk(devnode=None), "no device node"),
    ],
)
def test_other_devices_do_not_match(device: DeviceInfo, why: str) -> None:
    assert not driver().matches(device), why


def test_filesystems_can_be_narrowed() -> None:
    d = UsbStorageDriver([MatchRule()], Path("/x"), filesystems={"vfat"})
    assert d.matches(disk({"ID_FS_TYPE": "vfat"}))
    assert not d.matches(disk({"ID_FS_TYPE": "exfat"}))


def test_globs_match_udev_properties_case_insensitively() -> None:
    assert MatchRule(vendor_id="2E8A").matches(disk())
    assert MatchRule(vendor_id="2e8a", model_id="00c?").matches(disk())
    assert MatchRule(serial="cam*").matches(disk())
    assert MatchRule(vendor="evi*", model="*cam*").matches(disk())
    assert not MatchRule(vendor_id="1234").matches(disk())
    assert not MatchRule(serial="CAM0002").matches(disk())
    assert not MatchRule(vendor_id="2e8a", model="Other*").matches(disk())  # every field counts


def test_globs_fall_back_to_the_usb_parents_sysfs_attributes() -> None:
    bare = disk(
        drop=("ID_VENDOR_ID", "ID_MODEL_ID", "ID_SERIAL_SHORT", "ID_VENDOR", "ID_MODEL"),
        attrs={
            "idVendor": "2e8a",
            "idProduct": "00c1",
            "serial": "SN-77",
            "manufacturer": "Evidock Ltd",
            "product": "DSJ-X1",
        },
    )
    assert MatchRule(
        vendor_id="2e8a", model_id="00c1", serial="SN-*", vendor="evidock*", model="DSJ-*"
    ).matches(bare)
    assert MatchRule(vendor="Acme*").matches(disk({"ID_VENDOR_FROM_DATABASE": "Acme Corp"}))


def test_a_specific_glob_does_not_match_a_missing_value() -> None:
    bare = disk(drop=("ID_SERIAL_SHORT",))
    assert MatchRule(serial="*").matches(bare)
    assert not MatchRule(serial="CAM*").matches(bare)


def test_any_rule_may_match_and_candidates_keep_their_order() -> None:
    first = MatchRule(vendor_id="1234")
    second = MatchRule(vendor_id="2e8a", layout="Record")
    third = MatchRule(layout="")
    d = driver(first, second, third)
    assert d.matches(disk())
    assert d.candidate_rules(disk()) == [second, third]
    assert driver(first).candidate_rules(disk()) == []
    assert not UsbStorageDriver([], Path("/x")).matches(disk())


def test_attach_refuses_a_device_no_rule_accepts_before_mounting(tmp_path: Path) -> None:
    d = UsbStorageDriver([MatchRule(vendor_id="1234")], tmp_path / "mnt")
    with (
        pytest.raises(DeviceError, match=r"not a USB disk that a \[usb\] rule accepts"),
        d.attach(disk()),
    ):
        pytest.fail("attached")
    assert not (tmp_path / "mnt").exists()


# -- which files -------------------------------------------------------------------------


def test_includes_recordings_under_the_layout_by_extension() -> None:
    rule = MatchRule()
    assert rule.includes(b"DCIM/100MEDIA/CLIP0001.MP4")
    assert rule.includes(b"dcim/clip.mov")  # FAT is case-insensitive; so is the layout
    assert rule.includes(b"DCIM/" + "执法记录仪".encode("gbk") + b".Mp4")
    for ext in ("wav", "AMR", "jpg", "JPEG", "264", "h264", "ts"):
        assert rule.includes(b"DCIM/x." + ext.encode())
    assert not rule.includes(b"MISC/CLIP0001.MP4")  # outside the layout
    assert not rule.includes(b"DCIMX/CLIP0001.MP4")
    assert not rule.includes(b"DCIM")
    assert not rule.includes(b"DCIM/INDEX.DAT")
    assert not rule.includes(b"DCIM/MP4")  # no extension
    assert not rule.includes(b"DCIM/CLIP.MP4.part")


def test_nested_layout_empty_layout_and_extension_overrides() -> None:
    assert MatchRule(layout="DCIM/100MEDIA").includes(b"dcim/100media/a.mp4")
    assert not MatchRule(layout="DCIM/100MEDIA").includes(b"DCIM/101MEDIA/a.mp4")
    assert MatchRule(layout="").includes(b"anywhere/at/all.mp4")
    only = MatchRule(extensions=("dav",))
    assert only.includes(b"DCIM/a.DAV") and not only.includes(b"DCIM/a.mp4")
    everything = MatchRule(extensions=())
    assert everything.includes(b"DCIM/INDEX.DAT") and everything.includes(b"DCIM/noext")


@given(st.binary(max_size=40), st.binary(max_size=12))
def test_nothing_outside_the_layout_is_a_recording(prefix: bytes, name: bytes) -> None:
    rel = prefix + b"/" + name + b".mp4"
    assert MatchRule(layout="DCIM").includes(rel) == rel.lower().startswith(b"dcim/")


def test_default_extensions_are_lowercase_media_types() -> None:
    assert {"mp4", "mov", "avi", "wav", "jpg"} <= set(DEFAULT_EXTENSIONS)
    assert all(e == e.lower() and "." not in e for e in DEFAULT_EXTENSIONS)


# -- who it is -------------------------------------------------------------------------------


def test_identity_from_udev_then_usb_attribute_then_filesystem_uuid() -> None:
    d, root = driver(), Path("/unused")
    ident = d.identify(disk({"ID_FS_UUID": "4A1B-22CC", "ID_FS_LABEL": "CAM"}), root)
    assert (ident.driver, ident.serial, ident.vendor, ident.model) == (
        "usb",
        "CAM0001",
        "Evidock",
        "BodyCam_X1",
    )
    extra = dict(ident.extra)
    assert extra == {
        "serial_source": "udev",
        "usb_id": "2e8a:00c1",
        "fs_type": "exfat",
        "fs_uuid": "4A1B-22CC",
        "fs_label": "CAM",
    }

    from_attr = d.identify(
        disk(
            drop=("ID_SERIAL_SHORT", "ID_VENDOR", "ID_MODEL"),
            attrs={"serial": " SN-77 ", "manufacturer": "Acme", "product": "X"},
        ),
        root,
    )
    assert (from_attr.serial, from_attr.vendor, from_attr.model) == ("SN-77", "Acme", "X")
    assert dict(from_attr.extra)["serial_source"] == "usb"

    from_fs = d.identify(disk({"ID_FS_UUID": "4A1B-22CC"}, drop=("ID_SERIAL_SHORT",)), root)
    assert from_fs.serial == "fs-uuid-4A1B-22CC"
    assert dict(from_fs.extra)["serial_source"] == "fs_uuid"

    with pytest.raises(DeviceError, match="no serial number"):
        d.identify(disk(drop=("ID_SERIAL_SHORT",)), root)


def test_files_only_through_an_attached_root(tmp_path: Path) -> None:
    d = driver()
    rec = Recording(b"DCIM/CLIP0001.MP4", 1, 0)
    with pytest.raises(DeviceError, match="not a recorder this driver has attached"):
        list(d.recordings(tmp_path))
    with pytest.raises(DeviceError, match="not a recorder this driver has attached"):
        d.wipe(tmp_path, rec)
    with (
        pytest.raises(DeviceError, match="not a recorder this driver has attached"),
        d.writable(disk(), tmp_path),
    ):
        pytest.fail("writable")


# -- rules from the configuration ------------------------------------------------------------


def test_rule_from_mapping() -> None:
    assert MatchRule.from_mapping({}) == MatchRule()
    rule = MatchRule.from_mapping(
        {
            "vendor_id": "2e8a",
            "model_id": "00c*",
            "serial": "CAM*",
            "vendor": "Evidock",
            "model": "*",
            "layout": "/DCIM/100MEDIA/",
            "extensions": [".MP4", "wav", "mp4"],
        }
    )
    assert rule.layout == "DCIM/100MEDIA"
    assert rule.extensions == ("mp4", "wav")
    assert rule.matches(disk())
    assert MatchRule.from_mapping({"layout": "", "extensions": []}).includes(b"x")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"vendorid": "2e8a"}, "unknown key vendorid; a rule takes vendor_id, model_id"),
        ({"layout": "DCIM", "path": "x", "id": 1}, "unknown keys id, path"),
        ({"vendor_id": 0x2E8A}, "vendor_id must be a string"),
        ({"serial": ""}, 'serial must be a non-empty glob such as "\\*"'),
        ({"layout": "../etc"}, "layout '../etc' must be a plain folder path"),
        ({"layout": "DCIM//100MEDIA"}, "must be a plain folder path"),
        ({"layout": ["DCIM"]}, "layout must be a string"),
        ({"extensions": "mp4"}, "extensions must be a list of strings"),
        ({"extensions": ["mp4", 4]}, "extensions must be a list of strings"),
        ({"extensions": ["m p4"]}, "'m p4' is not a file extension"),
        ({"extensions": ["."]}, "'' is not a file extension"),
    ],
)
def test_rule_errors_name_the_problem(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        MatchRule.from_mapping(table, where="evidock.toml: [usb] rules[1]")
    assert str(e.value).startswith("evidock.toml: [usb] rules[1]: ")


def test_rule_refuses_a_non_table() -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        MatchRule.from_mapping(["layout"])  # type: ignore[arg-type]


def test_rule_validates_when_built_directly_too() -> None:
    with pytest.raises(ConfigError, match="layout"):
        MatchRule(layout="DCIM/../..")
    with pytest.raises(ConfigError, match="vendor_id"):
        MatchRule(vendor_id="")


# -- mount plans -------------------------------------------------------------------------------


def test_only_recorder_filesystems_are_ever_mounted() -> None:
    for fs in ("btrfs", "squashfs", "iso9660", "xfs", "crypto_LUKS", ""):
        with pytest.raises(DeviceError, match="not one a recorder uses"):
            _mount.plan(fs)


def test_plans_put_the_safety_flags_first() -> None:
    how = _mount.MountPlan("exfat", "exfat-fuse", fuse=True, options=("uid=0", "gid=0"))
    assert how.option_string(writable=False) == "ro,nosuid,nodev,noexec,uid=0,gid=0"
    assert how.option_string(writable=True).startswith("rw,nosuid,nodev,noexec,")
    assert set(_mount.KERNEL_NAMES) == _mount.SUPPORTED
    for names in _mount.KERNEL_NAMES.values():
        assert all(n in _mount.KERNEL_OPTIONS for n in names)


def test_mount_entry_reads_mountinfo() -> None:
    root = _mount.mount_entry(Path("/"))
    assert root is not None and root.mountpoint == "/"
    assert root.mount_options & {"ro", "rw"}
    assert _mount.mount_entry(Path("/nonexistent/evidock")) is None
    assert _mount._unescape(r"/run/a\040b\134c") == "/run/a b\\c"


def test_only_block_devices_under_dev_are_mounted() -> None:
    for bad in ("/etc/passwd", "/dev/../etc/passwd", "relative", "/dev/null"):
        with pytest.raises(DeviceError):
            _mount.check_block_device(bad)
