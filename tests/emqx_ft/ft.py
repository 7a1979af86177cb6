"""emqx_ft's command protocol as a pure core: topic in, command or refusal out; the
state of one transfer and the decision for each command.

Nothing here touches a socket or a file (the front and the storage do); every rule
names the EMQX function it follows (apps/emqx_ft/src/).
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field, replace

from tests.emqx_ft._erlang import string_to_integer_whole
from tests.emqx_ft.filemeta import FileMeta, FilemetaError, NotAnObjectError, decode

PREFIXES = ("$file", "$file-async")

RC_SUCCESS = 0x00  # emqx_ft.erl result_to_rc(ok)
RC_UNSPECIFIED_ERROR = 0x80  # result_to_rc({error, _})
# emqx_channel.erl puback_reason_code/3: the 'message.puback' fold starts from this
# (no subscriber matched, as none can for a $file topic); a crashed callback leaves it.
RC_NO_MATCHING_SUBSCRIBERS = 0x10
RESPONSE_VSN = "0.1"  # emqx_ft_schema.erl schema(command_response), vsn default


@dataclass(frozen=True)
class Ok:
    """``ok``: described as ``success`` (emqx_ft_error.erl format/1)."""

    description: str = "success"


@dataclass(frozen=True)
class Error:
    """``{error, Reason}``; ``description`` is emqx_ft_error.erl format/1 of it: the
    atom, the first atom of a 2-tuple, else ``internal_error``."""

    description: str
    detail: str = ""


Result = Ok | Error


def rc(result: Result) -> int:
    """emqx_ft.erl result_to_rc/1: 0x00 or 0x80, nothing else."""
    return RC_SUCCESS if isinstance(result, Ok) else RC_UNSPECIFIED_ERROR


def is_file_topic(topic: str) -> bool:
    """emqx_ft.erl on_message_publish/1 and on_message_puback/4 take only topics that
    start with ``$file/`` or ``$file-async/``."""
    return topic.startswith(("$file/", "$file-async/"))


# -- commands (emqx_ft.erl on_file_command/5, do_on_file_command/4, do_validate/2) ---


@dataclass(frozen=True)
class Init:
    """``[init]``: the filemeta, decoded."""

    file_id: str
    meta: FileMeta


@dataclass(frozen=True)
class Segment:
    """``[Offset]`` or ``[Offset, Checksum]``; the checksum was already checked."""

    file_id: str
    offset: int
    payload: bytes


@dataclass(frozen=True)
class Fin:
    """``[fin, Size]`` or ``[fin, Size, Checksum]``."""

    file_id: str
    size: int
    checksum: bytes | None


@dataclass(frozen=True)
class Abort:
    """``[abort]``: on_abort/3 is a TODO that answers ok."""

    file_id: str


@dataclass(frozen=True)
class Refused:
    """A command refused before it reaches storage (``?ACK_AND_PUBLISH({error, _})``)."""

    error: Error


@dataclass(frozen=True)
class HookCrash:
    """The callback crashed (a non-object filemeta): no result, PUBACK 0x10."""

    why: str


Command = Init | Segment | Fin | Abort | Refused | HookCrash


def _parse_checksum(text: str) -> bytes | None:
    # emqx_ft.erl parse_checksum/1: exactly 64 bytes of hex (either case).
    if len(text.encode()) != 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def parse(topic: str, payload: bytes) -> Command:
    """Decide what a ``$file…`` PUBLISH asks (emqx_ft.erl on_file_command/5).

    ``emqx_topic:tokens/1`` splits on "/" keeping empty levels; the first token is
    the prefix, the second the file id (non-empty, do_validate fileid), the rest the
    command."""
    tokens = topic.split("/")
    if len(tokens) < 2:
        return Refused(Error("invalid_topic", topic))
    file_id, rest = tokens[1], tokens[2:]
    if file_id == "":
        return Refused(Error("invalid_fileid"))
    if rest == ["init"]:
        try:
            return Init(file_id, decode(payload))
        except FilemetaError as e:
            return Refused(Error(e.reason, e.detail))
        except NotAnObjectError as e:
            return HookCrash(f"filemeta is a JSON {e}, not an object")
    if len(rest) in (2, 3) and rest[0] == "fin":
        size = string_to_integer_whole(rest[1])
        if size is None:
            return Refused(Error("invalid_size", rest[1]))
        checksum = None
        if len(rest) == 3:
            checksum = _parse_checksum(rest[2])
            if checksum is None:
                return Refused(Error("invalid_checksum", rest[2]))
        return Fin(file_id, size, checksum)
    if rest == ["abort"]:
        return Abort(file_id)
    if len(rest) in (1, 2):
        offset = string_to_integer_whole(rest[0])
        if offset is None:
            return Refused(Error("invalid_offset", rest[0]))
        if len(rest) == 2:
            checksum = _parse_checksum(rest[1])
            if checksum is None:
                return Refused(Error("invalid_checksum", rest[1]))
            # do_validate integrity: crypto:hash(sha256, Payload) must equal it.
            actual = hashlib.sha256(payload).digest()
            if actual != checksum:
                return Refused(Error("checksum_mismatch", actual.hex().upper()))
        return Segment(file_id, offset, payload)
    return Refused(Error("invalid_file_command", "/".join(rest)))


# -- one transfer's state (emqx_ft_storage_fs.erl, emqx_ft_assembly.erl) -------------


@dataclass(frozen=True)
class Transfer:
    """What storage holds for ``{ClientId, FileId}``: the filemeta and the segments,
    each kept under its ``SEG.<Offset>.<Size>`` name (so a segment sent again with
    the same offset and size replaces the old one: mk_segment_filename/1)."""

    client_id: str
    file_id: str
    meta: FileMeta | None = None
    segments: frozenset[tuple[int, int]] = field(default_factory=frozenset)


def on_init(state: Transfer, meta: FileMeta) -> tuple[Result, Transfer]:
    """emqx_ft_storage_fs.erl store_filemeta/3: the first init stores it; a later one
    is ok only if it equals the stored filemeta, else ``filemeta_conflict``."""
    if state.meta is None:
        return Ok(), replace(state, meta=meta)
    if state.meta.same_as(meta):
        return Ok(), state
    return Error("filemeta_conflict"), state


def on_segment(state: Transfer, offset: int, size: int) -> tuple[Result, Transfer]:
    """store_segment/3 stores whatever comes (no filemeta needed first)."""
    return Ok(), replace(state, segments=state.segments | {(offset, size)})


def coverage(segments: frozenset[tuple[int, int]], size: int) -> list[tuple[int, int]] | None:
    """emqx_ft_assembly.erl coverage/2: the cheapest chain of segments from offset 0 to
    exactly ``size`` (edge weight = segment size; emqx_wdgraph shortest path), or None.
    Empty segments are ignored (append_segmentinfo/3); so are names the listing would
    not parse (a negative offset fails break_segment_filename/1's regex)."""
    edges: dict[int, list[tuple[int, int]]] = {}
    for off, n in segments:
        if n > 0 and off >= 0:
            edges.setdefault(off, []).append((off + n, n))
    best: dict[int, int] = {0: 0}
    back: dict[int, tuple[int, int]] = {}
    queue = [(0, 0)]
    while queue:
        cost, at = heapq.heappop(queue)
        if at == size:
            chain: list[tuple[int, int]] = []
            while at != 0:
                seg = back[at]
                chain.append(seg)
                at = seg[0]
            return chain[::-1]
        if cost > best.get(at, cost):
            continue
        for end, n in edges.get(at, []):
            if end <= size and cost + n < best.get(end, cost + n + 1):
                best[end] = cost + n
                back[end] = (at, n)
                heapq.heappush(queue, (cost + n, end))
    return None


def fin_plan(state: Transfer, size: int) -> list[tuple[int, int]] | Error:
    """emqx_ft_assembler.erl list_local_fragments → list_remote_fragments (none on a
    single node): the chain to assemble, or ``{error, {incomplete, _}}`` (missing
    filemeta or a gap), described ``incomplete``."""
    if state.meta is None:
        return Error("incomplete", "missing filemeta")
    chain = coverage(state.segments, size)
    if chain is None:
        return Error("incomplete", f"missing segments below {size}")
    return chain


def export_checksum(meta: FileMeta, fin_checksum: bytes | None, actual: bytes) -> Result:
    """emqx_ft_storage_exporter.erl complete/2 + verify_checksum/2: the fin's checksum
    wins over the filemeta's; a mismatch is ``{error, {checksum_mismatch, Algo, Hex}}``,
    a 3-tuple, which emqx_ft_error.erl format/1 describes as ``internal_error``."""
    expected = fin_checksum if fin_checksum is not None else meta.checksum
    if expected is not None and expected != actual:
        return Error("internal_error", f"checksum_mismatch sha256 {actual.hex().upper()}")
    return Ok()


def response(topic: str, packet_id: int, result: Result) -> dict[str, object]:
    """emqx_ft.erl publish_response/2, encoded through schema(command_response)."""
    return {
        "vsn": RESPONSE_VSN,
        "topic": topic,
        "packet_id": packet_id,
        "reason_code": rc(result),
        "reason_description": result.description,
    }


def default_response_topic(client_id: str) -> str:
    """emqx_ft.erl response_topic/1: where results go without a Response-Topic."""
    return f"$file-response/{client_id}"


def clamp_segments_ttl(ttl: int | None, minimum: int, maximum: int) -> int:
    """emqx_ft_storage_fs_gc.erl get_segments_ttl/2 + clamp/2: min(Max, max(Min, V));
    an absent TTL (the atom undefined sorts above every number) gives Max."""
    if ttl is None:
        return maximum
    return min(maximum, max(minimum, ttl))
