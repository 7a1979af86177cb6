"""MQTT framing (3.1.1 and 5.0) for the front: enough to split the byte stream into
packets and to read CONNECT, CONNACK and PUBLISH; everything else stays opaque bytes.

MQTT 5.0 (OASIS, 2019): §2.1 fixed header, §1.5.5 Variable Byte Integer, §2.2.2
properties, §3.1 CONNECT, §3.2 CONNACK, §3.3 PUBLISH, §3.4 PUBACK.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
DISCONNECT = 14

# Property identifiers (§2.2.2.2) the front reads or writes.
PROP_PAYLOAD_FORMAT = 0x01
PROP_MESSAGE_EXPIRY = 0x02
PROP_CONTENT_TYPE = 0x03
PROP_RESPONSE_TOPIC = 0x08
PROP_CORRELATION_DATA = 0x09
PROP_SUBSCRIPTION_ID = 0x0B
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_TOPIC_ALIAS = 0x23
PROP_USER_PROPERTY = 0x26

_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROP_KIND = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _STRING, 0x13: _TWO, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip


class ProtocolError(Exception):
    """The stream is not MQTT the front can frame; the connection is closed."""


@dataclass(frozen=True)
class Packet:
    """One control packet: the first byte and the bytes after the remaining length."""

    first: int
    body: bytes

    @property
    def type(self) -> int:
        return self.first >> 4

    def encode(self) -> bytes:
        return bytes([self.first]) + varint(len(self.body)) + self.body


def varint(n: int) -> bytes:
    """§1.5.5 Variable Byte Integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, next offset)."""
    value, shift = 0, 0
    for i in range(4):
        if at + i >= len(data):
            raise ProtocolError("truncated variable byte integer")
        b = data[at + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, at + i + 1
        shift += 7
    raise ProtocolError("malformed variable byte integer")


async def read_packet(reader: asyncio.StreamReader, max_size: int | None = None) -> Packet | None:
    """The next packet, or None at a clean end of stream. Raises ProtocolError, or
    PacketTooLargeError when the packet is larger than ``max_size`` (the body is not read)."""
    try:
        first = (await reader.readexactly(1))[0]
    except asyncio.IncompleteReadError:
        return None
    length, shift = 0, 0
    for _ in range(4):
        b = (await reader.readexactly(1))[0]
        length |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    else:
        raise ProtocolError("malformed remaining length")
    total = 1 + len(varint(length)) + length
    if max_size is not None and total > max_size:
        raise PacketTooLargeError(total)
    return Packet(first, await reader.readexactly(length))


class PacketTooLargeError(ProtocolError):
    """A packet above the Maximum Packet Size (§3.1.2.11.4 / §3.2.2.3.6)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"packet of {size} bytes is too large")
        self.size = size


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    n = int.from_bytes(data[at : at + 2], "big")
    if at + 2 + n > len(data):
        raise ProtocolError("truncated string")
    return data[at + 2 : at + 2 + n], at + 2 + n


def encode_string(raw: bytes) -> bytes:
    """§1.5.4 / §1.5.6: two-byte length and the bytes."""
    return len(raw).to_bytes(2, "big") + raw


Property = tuple[int, object]


def parse_properties(data: bytes, at: int) -> tuple[list[Property], int]:
    """§2.2.2: (properties in order, offset after them). Values are int, bytes or
    (bytes, bytes) for a User Property."""
    length, at = read_varint(data, at)
    end = at + length
    props: list[Property] = []
    while at < end:
        ident = data[at]
        kind = _PROP_KIND.get(ident)
        at += 1
        value: object
        if kind == _BYTE:
            value, at = data[at], at + 1
        elif kind == _TWO:
            value, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif kind == _FOUR:
            value, at = int.from_bytes(data[at : at + 4], "big"), at + 4
        elif kind == _VARINT:
            value, at = read_varint(data, at)
        elif kind in (_STRING, _BINARY):
            value, at = _string(data, at)
        elif kind == _PAIR:
            k, at = _string(data, at)
            v, at = _string(data, at)
            value = (k, v)
        else:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
        props.append((ident, value))
    if at != end:
        raise ProtocolError("properties overrun their length")
    return props, end


def encode_properties(props: list[Property]) -> bytes:
    """Inverse of parse_properties."""
    out = bytearray()
    for ident, value in props:
        kind = _PROP_KIND[ident]
        out.append(ident)
        if kind == _BYTE:
            out.append(int(value))  # type: ignore[call-overload]
        elif kind == _TWO:
            out += int(value).to_bytes(2, "big")  # type: ignore[call-overload]
        elif kind == _FOUR:
            out += int(value).to_bytes(4, "big")  # type: ignore[call-overload]
        elif kind == _VARINT:
            out += varint(int(value))  # type: ignore[call-overload]
        elif kind in (_STRING, _BINARY):
            out += encode_string(bytes(value))  # type: ignore[call-overload]
        else:
            assert isinstance(value, tuple)
            k, v = value
            out += encode_string(bytes(k)) + encode_string(bytes(v))
    return varint(len(out)) + bytes(out)


@dataclass(frozen=True)
class Connect:
    """What the front needs of CONNECT: protocol level and client identifier."""

    level: int
    client_id: str


def parse_connect(p: Packet) -> Connect:
    """§3.1.2-3.1.3."""
    name, at = _string(p.body, 0)
    if name not in (b"MQTT", b"MQIsdp"):
        raise ProtocolError(f"not MQTT: {name!r}")
    level = p.body[at]
    at += 4  # level, flags, keep alive
    if level == 5:
        _, at = parse_properties(p.body, at)
    client_id, _ = _string(p.body, at)
    return Connect(level, client_id.decode("utf-8"))


@dataclass(frozen=True)
class Connack:
    """Reason code (return code before MQTT 5) and Assigned Client Identifier."""

    code: int
    assigned_client_id: str | None


def parse_connack(p: Packet, level: int) -> Connack:
    """§3.2.2."""
    code = p.body[1]
    assigned = None
    if level == 5 and len(p.body) > 2:
        props, _ = parse_properties(p.body, 2)
        for ident, value in props:
            if ident == PROP_ASSIGNED_CLIENT_ID and isinstance(value, bytes):
                assigned = value.decode()
    return Connack(code, assigned)


@dataclass(frozen=True)
class Publish:
    """§3.3: a PUBLISH, its properties kept in order (MQTT 5 only)."""

    dup: bool
    qos: int
    retain: bool
    topic: str
    packet_id: int | None
    properties: tuple[Property, ...]
    payload: bytes

    def prop(self, ident: int) -> object | None:
        for i, v in self.properties:
            if i == ident:
                return v
        return None

    def encode(self, level: int) -> Packet:
        first = (PUBLISH << 4) | (self.dup << 3) | (self.qos << 1) | int(self.retain)
        body = encode_string(self.topic.encode())
        if self.packet_id is not None:
            body += self.packet_id.to_bytes(2, "big")
        if level == 5:
            body += encode_properties(list(self.properties))
        return Packet(first, body + self.payload)


def parse_publish(p: Packet, level: int) -> Publish:
    """§3.3.1-3.3.3."""
    qos = (p.first >> 1) & 3
    topic, at = _string(p.body, 0)
    packet_id = None
    if qos:
        packet_id, at = int.from_bytes(p.body[at : at + 2], "big"), at + 2
    props: list[Property] = []
    if level == 5:
        props, at = parse_properties(p.body, at)
    return Publish(
        dup=bool(p.first & 8), qos=qos, retain=bool(p.first & 1),
        topic=topic.decode("utf-8"), packet_id=packet_id, properties=tuple(props),
        payload=p.body[at:],
    )  # fmt: skip


def ack(kind: int, packet_id: int, code: int, level: int) -> Packet:
    """PUBACK / PUBREC / PUBCOMP (§3.4.2): MQTT 5 carries the reason code (and no
    properties); 3.1.1 has only the packet id."""
    first = (kind << 4) | (2 if kind == PUBREL else 0)
    body = packet_id.to_bytes(2, "big")
    if level == 5:
        body += bytes([code])
    return Packet(first, body)


def disconnect(code: int, level: int) -> Packet:
    """§3.14: DISCONNECT with a reason code (MQTT 5) or plain."""
    return Packet(DISCONNECT << 4, bytes([code]) if level == 5 else b"")
