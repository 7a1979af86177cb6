"""From the daemon's snapshot to what the kiosk shows: pure functions, plain values.

``dock_view`` turns ``Daemon.snapshot()`` (sessions as ``SessionStatus.as_dict``
plus ``"upload"`` from ``Uploader.snapshot()``) into tiles and an uplink panel
whose every string is already in the reader's language. The same view feeds
the server-rendered page and the live updates (its JSON, sent only when it
changed), so the two can never disagree.

What a tile says, from the session's state and the uploader's queue:

=============  ===============================================================
``copying``     copying; each file is digested, fsynced and re-read in one pass,
                so copying and verifying are one phase on the tile
``verifying``   every file verified; the session entry and wipe are being written
``committed``   everything on the recorder is in the ledger (可以拔出)
``uploading``   committed, and some of its recordings are on their way
``receipted``   the platform receipted every recording of this recorder
``wiped``       the recordings were deleted from the recorder, by policy
=============  ===============================================================

"Safe to unplug" is shown when, and only when, the session says
``safe_to_unplug``; nothing here can turn it on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from agent.kiosk.i18n import Translator

# SessionStatus.state -> tile state while the session runs
_RUNNING = {
    "attaching": "attaching",
    "listing": "listing",
    "copying": "copying",
    "finishing": "verifying",
    "interrupted": "interrupted",
    "failed": "failed",
    "refused": "refused",
}
TILE_STATES = (
    "attaching",
    "listing",
    "copying",
    "verifying",
    "committed",
    "uploading",
    "receipted",
    "wiped",
    "interrupted",
    "failed",
    "refused",
)
_HINTED = ("interrupted", "failed", "refused")

# What the page's script clones for a recorder that docks while the page is open.
EMPTY_TILE: dict[str, Any] = {
    "id": "",
    "slot": "",
    "slot_full": "",
    "officer": "",
    "assigned": False,
    "device": "",
    "state": "attaching",
    "state_text": "",
    "hint": "",
    "files": "",
    "bytes": "",
    "pct": 0,
    "speed": "",
    "eta": "",
    "current": "",
    "safe": False,
    "unplug": "",
    "anomalies": [],
    "wiped": "",
    "present": True,
}


@dataclass(frozen=True)
class DeviceUploads:
    """The recordings of one recorder still on it (not wiped), by outbox state."""

    total: int = 0
    receipted: int = 0
    sending: int = 0  # queued, initialised or finished (awaiting a receipt)


# Lookups the view needs from the ledger; the app passes cached database reads.
AnomalyKind = Callable[[str | None, str], str | None]  # (serial, detail) -> kind
UploadsOf = Callable[[str], DeviceUploads]  # serial -> its recordings' upload states


def tile_id(slot: str) -> str:
    """A stable DOM id for a slot (its path may hold any character)."""
    return "t" + hashlib.sha256(slot.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def size_text(n: int | float) -> str:
    """Decimal units, as a recorder's box and a file manager show them."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at GB


def duration_text(t: Translator, seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return t("unit.s", n=s)
    if s < 3600:
        return t("unit.min", m=s // 60, s=s % 60)
    return t("unit.h", h=s // 3600, m=(s % 3600) // 60)


def local_time(when: float | str | None, offset_minutes: int) -> str:
    """A time stamp (epoch seconds or RFC 3339 text) in station local time, or ''."""
    if when is None or when == "":
        return ""
    zone = timezone(timedelta(minutes=offset_minutes))
    try:
        if isinstance(when, int | float):
            moment = datetime.fromtimestamp(float(when), UTC)
        else:
            moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return str(when)
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def tile_state(
    session: Mapping[str, Any], uploads: DeviceUploads | None, *, sending: bool = True
) -> str:
    """The tile's state; ``sending``: whether the uploader is connected (queued
    recordings are "uploading" only then; otherwise they wait, "committed")."""
    state = str(session.get("state"))
    if state != "committed":
        return _RUNNING.get(state, "unknown")
    if int(session.get("wiped") or 0) > 0 and (uploads is None or uploads.total == 0):
        return "wiped"
    if uploads is not None and uploads.total > 0:
        if uploads.receipted == uploads.total:
            return "receipted"
        if uploads.sending > 0 and sending:
            return "uploading"
    return "committed"


def anomaly_text(t: Translator, kind: str | None, detail: str) -> str:
    key = f"anomaly.{kind}"
    if kind is not None and t.has(key):
        return t(key)
    return t("anomaly.other", detail=detail)


def tile_view(
    t: Translator,
    session: Mapping[str, Any],
    *,
    anomaly_kind: AnomalyKind,
    uploads_of: UploadsOf,
    sending: bool = True,
) -> dict[str, Any]:
    """One tile as plain values (JSON-ready); every string already in ``t``'s language.
    ``sending``: the uploader is connected to the platform."""
    serial = session.get("serial")
    state_raw = str(session.get("state"))
    uploads = uploads_of(str(serial)) if serial and state_raw == "committed" else None
    state = tile_state(session, uploads, sending=sending)
    files_done, files_total = (
        int(session.get("files_done") or 0),
        int(session.get("files_total") or 0),
    )
    bytes_done, bytes_total = (
        int(session.get("bytes_done") or 0),
        int(session.get("bytes_total") or 0),
    )
    pct = 100 if bytes_total == 0 and state_raw == "committed" else 0
    if bytes_total > 0:
        pct = min(100, bytes_done * 100 // bytes_total)
    running = state in ("attaching", "listing", "copying", "verifying")
    speed = int(session.get("speed_bps") or 0)
    eta = int(session.get("eta_s") or 0)
    current = session.get("current")
    safe = session.get("safe_to_unplug") is True
    officer = session.get("officer")
    slot = str(session.get("slot") or "")
    anomalies = [
        anomaly_text(t, anomaly_kind(serial, str(d)), str(d))
        for d in session.get("anomalies") or []
    ]
    wiped = int(session.get("wiped") or 0)
    return {
        "id": tile_id(slot),
        "slot": slot.rstrip("/").rsplit("/", 1)[-1] or slot,
        "slot_full": slot,
        "officer": str(officer) if officer else t("tile.officer_none"),
        "assigned": bool(officer),
        "device": str(serial) if serial else "—",
        "state": state,
        "state_text": t(f"state.{state}"),
        "hint": t(f"hint.{state}") if state in _HINTED else "",
        "files": t("tile.files", done=files_done, total=files_total),
        "bytes": t("tile.bytes", done=size_text(bytes_done), total=size_text(bytes_total)),
        "pct": pct,
        "speed": t("tile.speed", speed=size_text(speed)) if running and speed > 0 else "",
        "eta": (t("tile.eta", eta=duration_text(t, eta)) if eta > 0 else t("tile.eta_none"))
        if running
        else "",
        "current": t("tile.current", name=str(current)) if running and current else "",
        "safe": safe,
        "unplug": t("tile.safe") if safe else t("tile.unsafe"),
        "anomalies": anomalies,
        "wiped": t("tile.wiped_count", n=wiped) if wiped else "",
        "present": session.get("present") is not False,
    }


def uplink_view(
    t: Translator, upload: Mapping[str, Any] | None, offset_minutes: int
) -> dict[str, Any]:
    """The uplink panel: broker link, queue, oldest unsent, last receipt.

    Every state has the same keys (``state``, ``link``, ``broker``, ``error``,
    ``note``, ``lines``): the page's template is strict and its script fills the
    same fields, so a dock without an uploader, or with no broker configured
    (uploads stay queued: a normal state), renders like any other."""
    if not isinstance(upload, Mapping):  # the daemon runs without an uploader
        return _uplink_panel("unknown", t("uplink.unknown"))
    link = upload.get("link") or {}
    queue = upload.get("queue") or {}
    note = ""
    if not link.get("configured", True):
        state, link_text = "unconfigured", t("uplink.unconfigured")
        note = t("uplink.unconfigured_note")
    elif link.get("connected"):
        state, link_text = "connected", t("uplink.connected")
    else:
        state, link_text = "disconnected", t("uplink.disconnected")
    broker = str(link.get("broker") or "")
    n = int(queue.get("unreceipted") or 0)
    lines = [
        t("uplink.queue", n=n, size=size_text(int(queue.get("pending_bytes") or 0)))
        if n
        else t("uplink.queue_empty")
    ]
    oldest = queue.get("oldest_unsent")
    if oldest:
        lines.append(t("uplink.oldest", when=local_time(oldest, offset_minutes)))
    last = queue.get("last_receipt")
    lines.append(
        t("uplink.last_receipt", when=local_time(last, offset_minutes))
        if last
        else t("uplink.no_receipt")
    )
    failed = int((queue.get("counts") or {}).get("failed") or 0)
    if failed:
        lines.append(t("uplink.failed", n=failed))
    # Refused for good by the platform: each with its reason (issue 12 item 5).
    for item in upload.get("failed") or ():
        if isinstance(item, Mapping) and item.get("name"):
            reason = str(item.get("error") or t("uplink.failed_no_reason"))
            lines.append(t("uplink.failed_file", name=str(item["name"]), reason=reason))
    current = upload.get("current")
    if isinstance(current, Mapping) and current.get("name"):
        size = int(current.get("size") or 0)
        sent = int(current.get("sent") or 0)
        pct = min(100, sent * 100 // size) if size else 0
        lines.append(t("uplink.current", name=str(current["name"]), pct=pct))
    error = link.get("last_error") if state == "disconnected" else None
    return _uplink_panel(
        state, link_text, broker=broker, error=str(error) if error else "", note=note, lines=lines
    )


def _uplink_panel(
    state: str,
    link: str,
    *,
    broker: str = "",
    error: str = "",
    note: str = "",
    lines: Sequence[str] = (),
) -> dict[str, Any]:
    """The uplink panel's one shape (what dock.html and kiosk.js read)."""
    return {
        "state": state,
        "link": link,
        "broker": broker,
        "error": error,
        "note": note,
        "lines": list(lines),
    }


def dock_view(
    t: Translator,
    snapshot: Mapping[str, Any],
    *,
    anomaly_kind: AnomalyKind,
    uploads_of: UploadsOf,
    offset_minutes: int,
) -> dict[str, Any]:
    """Tiles (in slot order, so they do not jump about) and the uplink panel."""
    sessions: Sequence[Mapping[str, Any]] = [
        s for s in snapshot.get("sessions") or [] if isinstance(s, Mapping)
    ]
    uplink = uplink_view(t, snapshot.get("upload"), offset_minutes)
    sending = uplink["state"] == "connected"
    tiles = [
        tile_view(t, s, anomaly_kind=anomaly_kind, uploads_of=uploads_of, sending=sending)
        for s in sorted(sessions, key=lambda s: str(s.get("slot")))
    ]
    return {"station": str(snapshot.get("station") or ""), "tiles": tiles, "uplink": uplink}
