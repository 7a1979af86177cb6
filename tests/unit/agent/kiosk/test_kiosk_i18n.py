"""The kiosk's words (agent.kiosk.i18n) and what the tiles say (agent.kiosk.views).

Both languages hold the same keys with the same placeholders; every key the
templates and views ask for exists; the glossary's terms are the ones shown;
no string carries markup; and a tile says 可以拔出 / "safe to unplug" exactly
when the session says so, whatever else the snapshot holds.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.kiosk import i18n
from agent.kiosk.i18n import EN, LANGUAGES, STRINGS, ZH, Translator
from agent.kiosk.views import (
    TILE_STATES,
    DeviceUploads,
    dock_view,
    duration_text,
    size_text,
    tile_state,
    tile_view,
    uplink_view,
)
from agent.offload import story
from agent.records import access, anomalies
from agent.records import registry as records
from agent.users import roles

KIOSK = Path(i18n.__file__).parent
USED = re.compile(r"""\bt\(\s*["'](\w+\.[a-z_.-]*[a-z_])["']""")


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def no_kind(_serial: str | None, _detail: str) -> str | None:
    return None


def no_uploads(_serial: str) -> DeviceUploads:
    return DeviceUploads()


def test_both_languages_have_the_same_keys_and_placeholders() -> None:
    assert set(STRINGS[ZH]) == set(STRINGS[EN])
    for key in STRINGS[ZH]:
        assert placeholders(STRINGS[ZH][key]) == placeholders(STRINGS[EN][key]), key


def test_every_key_the_templates_and_views_use_exists() -> None:
    sources = [*KIOSK.glob("templates/*.html"), *KIOSK.glob("*.py")]
    used = {key for path in sources for key in USED.findall(path.read_text(encoding="utf-8"))}
    assert len(used) > 50, used
    used |= {f"state.{s}" for s in (*TILE_STATES, "unknown")}
    used |= {f"hint.{s}" for s in ("interrupted", "failed", "refused")}
    used |= {f"kind.{k}" for k in records.ACT_KINDS}
    used |= {f"retention.{r}" for r in records.RETENTION_CLASSES}
    used |= {f"role.{r}" for r in roles.ROLES}
    used |= {f"anomaly.{k}" for k in story.KINDS}
    # the purpose form (agent.kiosk.app.set_purpose) and the access log page
    used |= {f"purpose.kind.{k}" for k in access.PURPOSE_KINDS}
    used |= {
        f"purpose.need_detail.{k}" for k, (_, needed) in access.PURPOSE_KINDS.items() if needed
    }
    used |= {"purpose.need_kind", "purpose.bad_text"}
    used |= {f"access.action.{a}" for a in (*access.ACTIONS, "archive")}
    for lang in LANGUAGES:
        missing = sorted(k for k in used if k not in STRINGS[lang])
        assert not missing, f"{lang}: {missing}"


def test_strings_are_plain_text() -> None:
    for lang in LANGUAGES:
        for key, text in STRINGS[lang].items():
            assert "<" not in text and ">" not in text, (lang, key)
            assert text == text.strip() and text, (lang, key)


@pytest.mark.parametrize(
    ("key", "term"),
    [
        ("tile.safe", "可以拔出"),
        ("tile.unsafe", "请勿拔出"),
        ("tag.case", "案件编号"),
        ("tag.kind", "执法环节"),
        ("tag.retention", "保存类别"),
        ("kind.inspection", "现场检查"),
        ("kind.interview", "询问"),
        ("kind.evidence_preservation", "证据保全"),
        ("kind.service", "送达"),
        ("kind.enforcement", "执行"),
        ("retention.routine", "日常"),
        ("retention.evidence", "证据"),
        ("retention.long-term", "长期保存"),
        ("state.receipted", "回执"),
        ("state.wiped", "清除记录仪数据"),
        ("tile.officer", "警号"),
        ("tile.slot", "采集口"),
        ("uplink.title", "上传"),
        ("nav.access", "调阅记录"),
        ("access.title", "调阅记录"),
        ("purpose.kind.spot_check", "抽检"),
        ("purpose.kind.case_work", "案件办理"),
        ("purpose.kind.disclosure", "信息公开申请"),
        ("purpose.kind.inspection", "督察"),
        ("purpose.kind.other", "其他"),
    ],
)
def test_chinese_follows_the_glossary(key: str, term: str) -> None:
    assert term in STRINGS[ZH][key]


def test_language_choice_falls_back_to_chinese() -> None:
    assert i18n.DEFAULT == ZH
    assert i18n.pick("en") == EN
    for bad in (None, "", "fr", "EN", "zh", "en;q=1", "<script>"):
        assert i18n.pick(bad) == ZH
    t = Translator("fr")
    assert t.lang == ZH and t("tile.safe") == "可以拔出"
    assert t("no.such.key") == "no.such.key"
    assert Translator(EN)("tile.files", done=1, total=2) == "Files 1 / 2"


def test_units() -> None:
    zh, en = Translator(ZH), Translator(EN)
    assert size_text(0) == "0 B"
    assert size_text(999) == "999 B"
    assert size_text(1500) == "1.5 KB"
    assert size_text(35_000_000) == "35.0 MB"
    assert size_text(4_200_000_000) == "4.2 GB"
    assert duration_text(zh, 42) == "42 秒"
    assert duration_text(en, 200) == "3 min 20 s"
    assert duration_text(zh, 7260) == "2 小时 1 分"


def session(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "slot": "/sys/devices/usb-sdb1/sdb1",
        "driver": "usb",
        "state": "copying",
        "serial": "CAM1",
        "officer": "100001",
        "files_total": 4,
        "files_done": 1,
        "bytes_total": 4000,
        "bytes_done": 1000,
        "speed_bps": 1000,
        "eta_s": 3,
        "current": "DCIM/100MEDIA/A.MP4",
        "anomalies": [],
        "errors": [],
        "wiped": 0,
        "safe_to_unplug": False,
        "present": True,
    }
    return base | changes


def test_tile_states_follow_the_session_and_the_outbox() -> None:
    assert tile_state(session(state="listing"), None) == "listing"
    assert tile_state(session(state="copying"), None) == "copying"
    assert tile_state(session(state="finishing"), None) == "verifying"
    assert tile_state(session(state="interrupted"), None) == "interrupted"
    assert tile_state(session(state="bogus"), None) == "unknown"
    done = session(state="committed", safe_to_unplug=True)
    assert tile_state(done, DeviceUploads()) == "committed"
    assert tile_state(done, DeviceUploads(total=3, sending=3)) == "uploading"
    assert tile_state(done, DeviceUploads(total=3, sending=3), sending=False) == "committed"
    assert tile_state(done, DeviceUploads(total=3, receipted=3)) == "receipted"
    assert tile_state(session(state="committed", wiped=3), DeviceUploads()) == "wiped"


def test_a_tile_in_both_languages() -> None:
    s = session(anomalies=["clip numbers skip"])
    kinds = {"clip numbers skip": anomalies.MISSING_CLIP_NUMBERS}

    def kind(_serial: str | None, detail: str) -> str | None:
        return kinds.get(detail)

    zh = tile_view(Translator(ZH), s, anomaly_kind=kind, uploads_of=no_uploads)
    en = tile_view(Translator(EN), s, anomaly_kind=kind, uploads_of=no_uploads)
    assert (zh["unplug"], en["unplug"]) == ("请勿拔出", "Do not unplug")
    assert zh["files"] == "文件 1 / 4" and zh["pct"] == 25
    assert zh["anomalies"] == [STRINGS[ZH]["anomaly.missing_clip_numbers"]]
    assert en["anomalies"] == [STRINGS[EN]["anomaly.missing_clip_numbers"]]
    odd = tile_view(
        Translator(EN), session(anomalies=["<b>x</b>"]), anomaly_kind=no_kind, uploads_of=no_uploads
    )
    assert odd["anomalies"] == ["Anomaly: <b>x</b>"]  # unknown wording: shown as given, as text
    assert zh["id"] == en["id"] and re.fullmatch(r"t[0-9a-f]{16}", zh["id"])


def test_uplink_panel() -> None:
    t = Translator(EN)
    assert uplink_view(t, None, 480)["state"] == "unknown"
    off = uplink_view(t, {"link": {"configured": False}, "queue": {}}, 480)
    assert off["state"] == "unconfigured" and off["lines"] == [
        "Nothing waiting to upload",
        "No receipt yet",
    ]
    up = uplink_view(
        t,
        {
            "link": {"configured": True, "connected": True, "broker": "mqtts://p:8883"},
            "queue": {
                "unreceipted": 2,
                "pending_bytes": 2_000_000,
                "oldest_unsent": "2026-03-02T00:00:00Z",
                "last_receipt": 1_772_409_600.0,  # 2026-03-02T00:00:00Z
                "counts": {"failed": 1},
            },
            "current": {"name": "A.MP4", "size": 200, "sent": 50},
        },
        480,
    )
    assert up["state"] == "connected" and up["broker"] == "mqtts://p:8883"
    assert up["lines"] == [
        "2 file(s) to upload, 2.0 MB",
        "Oldest not sent: 2026-03-02 08:00:00",
        "Last receipt: 2026-03-02 08:00:00",
        "1 file(s) failed to upload; ask an administrator",
        "Uploading: A.MP4 (25%)",
    ]
    down = uplink_view(t, {"link": {"connected": False, "last_error": "refused"}, "queue": {}}, 480)
    assert down["state"] == "disconnected" and down["error"] == "refused"


SESSION_VALUES = st.fixed_dictionaries(
    {
        "slot": st.text(max_size=40),
        "state": st.sampled_from(
            [
                "attaching",
                "listing",
                "copying",
                "finishing",
                "committed",
                "interrupted",
                "failed",
                "refused",
                "x",
            ]
        ),
        "serial": st.none() | st.text(max_size=20),
        "officer": st.none() | st.text(max_size=20),
        "files_total": st.integers(0, 10**6),
        "files_done": st.integers(0, 10**6),
        "bytes_total": st.integers(0, 10**13),
        "bytes_done": st.integers(0, 10**13),
        "speed_bps": st.integers(0, 10**10),
        "eta_s": st.integers(0, 10**7),
        "current": st.none() | st.text(max_size=40),
        "anomalies": st.lists(st.text(max_size=30), max_size=3),
        "wiped": st.integers(0, 100),
        "safe_to_unplug": st.sampled_from([True, False, None, "yes", 1]),
    }
)


@given(
    sessions=st.lists(SESSION_VALUES, max_size=4),
    uploads=st.builds(DeviceUploads, st.integers(0, 9), st.integers(0, 9), st.integers(0, 9)),
    lang=st.sampled_from(LANGUAGES),
)
def test_safe_to_unplug_is_shown_only_when_the_session_says_so(
    sessions: list[dict[str, Any]], uploads: DeviceUploads, lang: str
) -> None:
    t = Translator(lang)
    view = dock_view(
        t,
        {"station": "S", "sessions": sessions},
        anomaly_kind=no_kind,
        uploads_of=lambda _s: uploads,
        offset_minutes=480,
    )
    by_id: dict[str, list[dict[str, Any]]] = {}
    for s in sessions:
        by_id.setdefault(
            tile_view(t, s, anomaly_kind=no_kind, uploads_of=lambda _s: uploads)["id"], []
        ).append(s)
    assert len(view["tiles"]) == len(sessions)
    for tile in view["tiles"]:
        safe = [s["safe_to_unplug"] is True for s in by_id[tile["id"]]]
        assert tile["safe"] in safe
        assert tile["unplug"] == (t("tile.safe") if tile["safe"] else t("tile.unsafe"))
        assert 0 <= tile["pct"] <= 100


@pytest.mark.parametrize(
    ("lang", "line"),
    [
        (EN, "Upload failed: A.MP4 (reason: filemeta_conflict)"),
        (ZH, "上传失败：A.MP4（原因：filemeta_conflict）"),
    ],
)
def test_uplink_panel_names_each_refused_file_with_its_reason(lang: str, line: str) -> None:
    """A permanent refusal ends the transfer (issue 12 item 5): the supervisor sees
    which file and why, in the kiosk's language, not just a count."""
    t = Translator(lang)
    upload = {
        "link": {"configured": True, "connected": True, "broker": "mqtts://p:8883"},
        "queue": {"counts": {"failed": 2}},
        "failed": [{"name": "A.MP4", "error": "filemeta_conflict"}, {"name": "B.MP4"}],
    }
    lines = uplink_view(t, upload, 480)["lines"]
    assert line in lines
    assert t("uplink.failed_file", name="B.MP4", reason=t("uplink.failed_no_reason")) in lines
