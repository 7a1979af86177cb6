"""The kiosk's words, in Simplified Chinese (the default) and English.

Chinese terms follow the glossary (shared/docs/glossary.md): 采集站, 采集口,
执法记录仪, 警号, 采集, 校验通过, 可以拔出 / 请勿拔出, 案件编号, 执法环节,
保存类别, 上传, 回执, 清除记录仪数据, 异常 (缺失, 时间异常, 未绑定设备).

Anomalies are said the way an officer at the end of a shift understands them
(what happened and what to do), not in the ledger's vocabulary; the ledger's
English ``detail`` stays available to supervisors on a recording's page.

Every string is plain text: templates autoescape it and the page's script
sets it with ``textContent``, so a translation can never carry markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

ZH: Final = "zh-CN"
EN: Final = "en"
LANGUAGES: Final = (ZH, EN)
DEFAULT: Final = ZH
# The name of each language in itself, for the switch.
NATIVE_NAMES: Final = {ZH: "中文", EN: "English"}
HTML_LANG: Final = {ZH: "zh-CN", EN: "en"}

_ZH: dict[str, str] = {
    # page frame
    "app.title": "执法记录仪采集站",
    "app.station": "采集站 {station}",
    "nav.dock": "采集状态",
    "nav.recordings": "音视频记录",
    "nav.login": "登录",
    "nav.logout": "退出登录",
    "nav.user": "{name}（{role}）",
    "lang.switch": "切换语言",
    "role.officer": "执法人员",
    "role.supervisor": "主管",
    "role.auditor": "审计人员",
    "role.admin": "管理员",
    # dock tiles
    "dock.empty": "暂无记录仪接入。请将执法记录仪插入任一采集口。",
    "dock.live_off": "实时更新已断开，页面将自动刷新。",
    "tile.officer": "警号",
    "tile.officer_none": "未绑定",
    "tile.device": "设备",
    "tile.slot": "采集口",
    "tile.files": "文件 {done} / {total}",
    "tile.bytes": "{done} / {total}",
    "tile.speed": "速度 {speed}/秒",
    "tile.eta": "剩余约 {eta}",
    "tile.eta_none": "剩余时间 —",
    "tile.current": "正在采集：{name}",
    "tile.safe": "可以拔出",
    "tile.unsafe": "请勿拔出",
    "tile.anomalies": "异常",
    "tile.wiped_count": "已从记录仪清除 {n} 个文件",
    # tile states
    "state.attaching": "正在识别记录仪",
    "state.listing": "正在读取文件列表",
    "state.copying": "正在采集并校验",
    "state.verifying": "校验通过，正在存证",
    "state.committed": "校验通过，已存证",
    "state.uploading": "已存证，正在上传",
    "state.receipted": "平台已回执",
    "state.wiped": "已清除记录仪数据",
    "state.interrupted": "采集中断",
    "state.failed": "采集失败",
    "state.refused": "空间不足，未采集",
    "state.unknown": "状态未知",
    # what to do, under a state that needs it
    "hint.interrupted": "记录仪在采集完成前被拔出或停止。请重新插入，已采集的文件不会重复采集。",
    "hint.failed": "采集出错，请联系管理员。已采集的文件已妥善保存。",
    "hint.refused": "采集站存储空间不足，没有复制也没有删除任何文件。请联系管理员。",
    # anomalies in plain words
    "anomaly.unassigned_device": "此记录仪未绑定警员：文件已保存，请联系管理员绑定设备。",
    "anomaly.overdue_device": "此记录仪已多日未采集，请按规定及时采集。",
    "anomaly.clock_offset": "记录仪时间不准，已记录偏差，请校准记录仪时钟。",
    "anomaly.future_dated": "有文件的时间晚于当前时间，记录仪时钟可能有误。",
    "anomaly.missing_clip_numbers": "文件编号不连续，可能有录像缺失，请向主管说明。",
    "anomaly.time_gap": "执勤期间有一段时间没有录像，请向主管说明。",
    "anomaly.undecodable": "有文件无法完整播放（可能不完整或损坏），已保存并标记。",
    "anomaly.refused_file": "记录仪上有项目不是普通录像文件，未采集。",
    "anomaly.other": "异常：{detail}",
    # uplink panel
    "uplink.title": "上传到管理平台",
    "uplink.connected": "已连接",
    "uplink.disconnected": "未连接",
    "uplink.unconfigured": "未配置上传",
    "uplink.unknown": "上传状态未知",
    "uplink.queue": "待上传 {n} 个文件，共 {size}",
    "uplink.queue_empty": "没有待上传的文件",
    "uplink.oldest": "最早未上传：{when}",
    "uplink.last_receipt": "最近回执：{when}",
    "uplink.no_receipt": "尚无回执",
    "uplink.current": "正在上传：{name}（{pct}%）",
    "uplink.failed": "{n} 个文件上传失败，请联系管理员",
    # recordings (supervisors)
    "rec.title": "音视频记录",
    "rec.filter.officer": "警号",
    "rec.filter.device": "设备",
    "rec.filter.date": "录制日期",
    "rec.filter.untagged": "仅显示未绑定案件的",
    "rec.filter.apply": "筛选",
    "rec.filter.clear": "清除筛选",
    "rec.count": "共 {n} 条",
    "rec.none": "没有符合条件的记录。",
    "rec.col.select": "选择",
    "rec.col.thumb": "画面",
    "rec.col.time": "录制时间",
    "rec.col.officer": "警号",
    "rec.col.device": "设备",
    "rec.col.file": "文件",
    "rec.col.duration": "时长",
    "rec.col.case": "案件",
    "rec.untagged": "未绑定",
    "rec.play": "回放",
    "rec.details": "详情",
    "rec.prev": "上一页",
    "rec.next": "下一页",
    "rec.page": "第 {page} / {pages} 页",
    "rec.decodes_no": "无法完整解码",
    "rec.only_own": "只显示您本人的记录。",
    "rec.no_thumb": "无缩略图",
    # tagging
    "tag.title": "绑定到案件",
    "tag.case": "案件编号",
    "tag.kind": "执法环节",
    "tag.retention": "保存类别",
    "tag.reason": "原因（证据、长期保存时必填）",
    "tag.submit": "绑定所选记录",
    "tag.done": "已将 {n} 条记录绑定到案件 {case}（存证日志第 {seq} 条，操作人 {by}）。",
    "tag.select_hint": "先在列表中勾选记录。",
    "tag.this": "绑定此记录到案件",
    "kind.inspection": "现场检查",
    "kind.interview": "询问",
    "kind.evidence_preservation": "证据保全",
    "kind.service": "送达",
    "kind.enforcement": "执行",
    "kind.other": "其他",
    "retention.routine": "日常（至少一年）",
    "retention.evidence": "证据（随案卷保存）",
    "retention.long-term": "长期保存",
    # one recording
    "one.title": "记录详情",
    "one.sha256": "SHA-256",
    "one.size": "大小",
    "one.source": "记录仪上的路径",
    "one.ingested": "采集时间",
    "one.media": "媒体信息",
    "one.tags": "案件绑定",
    "one.anomalies": "异常",
    "one.no_tags": "尚未绑定案件",
    "one.cannot_play": "您的角色不能回放。",
    "one.back": "返回列表",
    # login
    "login.title": "登录",
    "login.name": "用户名",
    "login.secret": "密码或 PIN",
    "login.submit": "登录",
    "login.failed": "用户名或密码错误，或账户已被暂时锁定。",
    # errors
    "error.title": "无法完成",
    "error.forbidden": "您的角色无权执行此操作。",
    "error.csrf": "页面已过期，请返回重新操作。",
    "error.login_needed": "请先登录。",
    "error.not_found": "没有找到。",
    "error.bad_input": "输入有误：{message}",
    "error.back": "返回",
    # units
    "unit.s": "{n} 秒",
    "unit.min": "{m} 分 {s} 秒",
    "unit.h": "{h} 小时 {m} 分",
}

_EN: dict[str, str] = {
    "app.title": "Body-camera docking station",
    "app.station": "Station {station}",
    "nav.dock": "Docked recorders",
    "nav.recordings": "Recordings",
    "nav.login": "Log in",
    "nav.logout": "Log out",
    "nav.user": "{name} ({role})",
    "lang.switch": "Change language",
    "role.officer": "officer",
    "role.supervisor": "supervisor",
    "role.auditor": "auditor",
    "role.admin": "administrator",
    "dock.empty": "No recorder docked. Plug a body camera into any slot.",
    "dock.live_off": "Live updates lost; the page reloads by itself.",
    "tile.officer": "Officer",
    "tile.officer_none": "not assigned",
    "tile.device": "Device",
    "tile.slot": "Slot",
    "tile.files": "Files {done} / {total}",
    "tile.bytes": "{done} / {total}",
    "tile.speed": "Speed {speed}/s",
    "tile.eta": "About {eta} left",
    "tile.eta_none": "Time left —",
    "tile.current": "Copying: {name}",
    "tile.safe": "Safe to unplug",
    "tile.unsafe": "Do not unplug",
    "tile.anomalies": "Anomalies",
    "tile.wiped_count": "{n} file(s) wiped from the recorder",
    "state.attaching": "Identifying the recorder",
    "state.listing": "Reading the file list",
    "state.copying": "Copying and verifying",
    "state.verifying": "Verified, recording in the ledger",
    "state.committed": "Verified and committed",
    "state.uploading": "Committed, uploading",
    "state.receipted": "Receipted by the platform",
    "state.wiped": "Wiped from the recorder",
    "state.interrupted": "Interrupted",
    "state.failed": "Failed",
    "state.refused": "Dock full: nothing copied",
    "state.unknown": "Unknown state",
    "hint.interrupted": "The recorder was unplugged or stopped before the end. Plug it in again: what was copied is not copied twice.",
    "hint.failed": "Something went wrong; ask an administrator. What was copied is safe.",
    "hint.refused": "The dock is out of space; nothing was copied or deleted. Ask an administrator.",
    "anomaly.unassigned_device": "This camera is not assigned to an officer: the files are kept; ask an administrator to assign it.",
    "anomaly.overdue_device": "This camera had not been docked for several days; dock it on time.",
    "anomaly.clock_offset": "The camera's clock is wrong (the difference is on record); have it set.",
    "anomaly.future_dated": "Some files are dated in the future; the camera's clock may be wrong.",
    "anomaly.missing_clip_numbers": "Clip numbers skip: recordings may be missing. Tell your supervisor.",
    "anomaly.time_gap": "There is a stretch of the shift with no recording. Tell your supervisor.",
    "anomaly.undecodable": "A file does not play to the end (incomplete or damaged); it is kept and flagged.",
    "anomaly.refused_file": "Something on the camera is not an ordinary recording and was not copied.",
    "anomaly.other": "Anomaly: {detail}",
    "uplink.title": "Upload to the platform",
    "uplink.connected": "Connected",
    "uplink.disconnected": "Not connected",
    "uplink.unconfigured": "Upload not configured",
    "uplink.unknown": "Upload state unknown",
    "uplink.queue": "{n} file(s) to upload, {size}",
    "uplink.queue_empty": "Nothing waiting to upload",
    "uplink.oldest": "Oldest not sent: {when}",
    "uplink.last_receipt": "Last receipt: {when}",
    "uplink.no_receipt": "No receipt yet",
    "uplink.current": "Uploading: {name} ({pct}%)",
    "uplink.failed": "{n} file(s) failed to upload; ask an administrator",
    "rec.title": "Recordings",
    "rec.filter.officer": "Officer",
    "rec.filter.device": "Device",
    "rec.filter.date": "Recorded on",
    "rec.filter.untagged": "Untagged only",
    "rec.filter.apply": "Filter",
    "rec.filter.clear": "Clear",
    "rec.count": "{n} recording(s)",
    "rec.none": "No recordings match.",
    "rec.col.select": "Select",
    "rec.col.thumb": "Picture",
    "rec.col.time": "Recorded",
    "rec.col.officer": "Officer",
    "rec.col.device": "Device",
    "rec.col.file": "File",
    "rec.col.duration": "Length",
    "rec.col.case": "Case",
    "rec.untagged": "untagged",
    "rec.play": "Play",
    "rec.details": "Details",
    "rec.prev": "Previous",
    "rec.next": "Next",
    "rec.page": "Page {page} of {pages}",
    "rec.decodes_no": "does not decode to the end",
    "rec.only_own": "Only your own recordings are shown.",
    "rec.no_thumb": "no picture",
    "tag.title": "Bind to a case",
    "tag.case": "Case number",
    "tag.kind": "Act kind",
    "tag.retention": "Retention class",
    "tag.reason": "Reason (required for evidence and long-term)",
    "tag.submit": "Bind the selected recordings",
    "tag.done": "{n} recording(s) bound to case {case} (ledger entry {seq}, by {by}).",
    "tag.select_hint": "Tick recordings in the list first.",
    "tag.this": "Bind this recording to a case",
    "kind.inspection": "Inspection",
    "kind.interview": "Interview",
    "kind.evidence_preservation": "Evidence preservation",
    "kind.service": "Service",
    "kind.enforcement": "Enforcement",
    "kind.other": "Other",
    "retention.routine": "Routine (at least one year)",
    "retention.evidence": "Evidence (kept with the case file)",
    "retention.long-term": "Long-term",
    "one.title": "Recording",
    "one.sha256": "SHA-256",
    "one.size": "Size",
    "one.source": "Path on the recorder",
    "one.ingested": "Offloaded",
    "one.media": "Media",
    "one.tags": "Cases",
    "one.anomalies": "Anomalies",
    "one.no_tags": "Not bound to a case yet",
    "one.cannot_play": "Your role may not play recordings.",
    "one.back": "Back to the list",
    "login.title": "Log in",
    "login.name": "User name",
    "login.secret": "Password or PIN",
    "login.submit": "Log in",
    "login.failed": "Wrong user name or password, or the account is locked for a while.",
    "error.title": "Could not do that",
    "error.forbidden": "Your role may not do this.",
    "error.csrf": "This page has expired; go back and try again.",
    "error.login_needed": "Please log in first.",
    "error.not_found": "Not found.",
    "error.bad_input": "Check your input: {message}",
    "error.back": "Back",
    "unit.s": "{n} s",
    "unit.min": "{m} min {s} s",
    "unit.h": "{h} h {m} min",
}

STRINGS: Final[Mapping[str, Mapping[str, str]]] = {ZH: _ZH, EN: _EN}


def pick(value: str | None) -> str:
    """A supported language from a cookie or form value; the default otherwise."""
    return value if value in LANGUAGES else DEFAULT


def text(lang: str, key: str, **values: object) -> str:
    """The string ``key`` in ``lang`` with ``{name}`` placeholders filled in.

    A key missing from a language falls back to Chinese, then to the key itself,
    so a gap shows up on the screen instead of an error page."""
    template = STRINGS.get(lang, _ZH).get(key) or _ZH.get(key) or key
    return template.format(**values) if values else template


class Translator:
    """``t("key", n=3)`` for one language, as templates and views call it."""

    def __init__(self, lang: str) -> None:
        self.lang = pick(lang)

    def __call__(self, key: str, **values: object) -> str:
        return text(self.lang, key, **values)

    def has(self, key: str) -> bool:
        return key in STRINGS[self.lang]
