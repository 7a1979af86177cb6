"""The front: TLS for the clients, a byte-for-byte relay to mosquitto, and emqx_ft.

Each client connection gets its own connection to the upstream mosquitto; packets
are framed in both directions (mqtt.read_packet) and passed on unchanged, except:
- a PUBLISH to ``$file/…`` or ``$file-async/…`` is never forwarded (emqx_ft.erl
  on_message_publish/1 sets ``allow_publish => false``); QoS 1 ones are file commands
  (emqx_ft.erl on_message_puback/4 runs only from emqx_channel.erl do_publish/3 for
  QoS 1), answered here with PUBACK 0x00/0x80 (result_to_rc/1); a QoS 0 one is
  dropped and a QoS 2 one gets PUBREC 0x10 (emqx_channel.erl pubrec_reason_code/1:
  no subscriber) and its PUBREL a PUBCOMP from here, with no command run;
- a packet larger than the Maximum Packet Size ends the connection with DISCONNECT
  0x95 (as emqx_frame does), so an oversized file command cannot slip through;
- a Topic Alias the client set on a ``$file`` PUBLISH is resolved here; mosquitto
  never learnt it, so an ordinary PUBLISH that later uses it is sent with its topic.
Results are published through the responder, one MQTT 5 client of the front's own
(emqx_ft.erl publish_response/2 publishes them as a broker message, QoS 1, with the
command's Correlation-Data, to its Response-Topic or ``$file-response/{clientid}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.emqx_ft import ft, mqtt
from tests.emqx_ft._erlang import jiffy_encode
from tests.emqx_ft.exporters import Exporter
from tests.emqx_ft.storage import SegmentStorage

log = logging.getLogger(__name__)

EMQX_MAX_PACKET_SIZE = 1024 * 1024  # emqx_schema mqtt.max_packet_size default "1MB"
ASSEMBLE_TIMEOUT_S = 300.0  # emqx_ft_schema.erl assemble_timeout default 5m
GC_INTERVAL_S = 3600.0  # emqx_ft_schema.erl local_storage_segments_gc interval 1h
RC_PACKET_TOO_LARGE = 0x95


class Responder:
    """The broker side's publisher: a paho MQTT 5 client on its own thread."""

    def __init__(
        self, host: str, port: int, username: str, password: str, cafile: str | None
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="emqx-ft-responder", protocol=paho.MQTTv5
        )
        self.client.username_pw_set(username, password)
        if cafile:
            self.client.tls_set(ca_certs=cafile)
        self._ready = threading.Event()
        self._code: object = None
        self.client.on_connect = self._on_connect
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError(f"responder could not connect to {host}:{port}")
        if self._code != 0:
            raise RuntimeError(f"responder refused by {host}:{port}: {self._code}")

    def _on_connect(
        self, _c: paho.Client, _u: object, _f: object, code: object, _p: object
    ) -> None:
        self._code = code
        self._ready.set()

    def publish(self, topic: str, payload: bytes, correlation_data: bytes | None) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos=1, properties=props)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class FrontConfig:
    """Everything the front runs with."""

    listen: tuple[str, int]
    upstream: tuple[str, int]
    server_ssl: ssl.SSLContext | None
    upstream_ssl: ssl.SSLContext | None
    storage: SegmentStorage
    exporter: Exporter
    max_packet_size: int = EMQX_MAX_PACKET_SIZE
    assemble_timeout_s: float = ASSEMBLE_TIMEOUT_S
    gc_interval_s: float = GC_INTERVAL_S


@dataclass
class _Conn:
    writer: asyncio.StreamWriter
    level: int = 5
    client_id: str = ""
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    aliases: dict[int, str] = field(default_factory=dict)
    unknown_upstream: set[int] = field(default_factory=set)  # aliases mosquitto lacks
    qos2_ids: set[int] = field(default_factory=set)
    pending_fins: set[int] = field(default_factory=set)

    def send(self, packet: mqtt.Packet) -> None:
        # One write per whole packet: packets from mosquitto and from the front interleave
        # only at packet boundaries (asyncio runs one callback at a time).
        if not self.writer.is_closing():
            self.writer.write(packet.encode())


class Front:
    """The asyncio server; ``serve()`` runs until cancelled."""

    def __init__(self, config: FrontConfig, responder: Responder) -> None:
        self.config = config
        self.responder = responder
        self.assemblies: dict[tuple[str, str], asyncio.Future[ft.Result]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        host, port = self.config.listen
        server = await asyncio.start_server(self._client, host, port, ssl=self.config.server_ssl)
        gc = asyncio.create_task(self._gc_loop())
        if ready is not None:
            ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            gc.cancel()

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gc_interval_s)
            n = await asyncio.to_thread(self.config.storage.gc)
            log.info("segments gc removed %d files", n)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- relay ----------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.config.upstream
        try:
            up_reader, up_writer = await asyncio.open_connection(
                host, port, ssl=self.config.upstream_ssl
            )
        except OSError as e:
            log.error("upstream %s:%d unreachable: %s", host, port, e)
            writer.close()
            return
        conn = _Conn(writer)
        down = asyncio.create_task(self._downstream(conn, up_reader))
        try:
            await self._upstream(conn, reader, up_writer)
        except (mqtt.ProtocolError, ConnectionError, asyncio.IncompleteReadError) as e:
            log.info("client %r: %s", conn.client_id, e)
        finally:
            up_writer.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(down, 5)
            writer.close()

    async def _downstream(self, conn: _Conn, up_reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, mqtt.ProtocolError):
            while (p := await mqtt.read_packet(up_reader)) is not None:
                if p.type == mqtt.CONNACK:
                    connack = mqtt.parse_connack(p, conn.level)
                    if connack.assigned_client_id:
                        conn.client_id = connack.assigned_client_id
                    if connack.code == 0:
                        conn.connected.set()
                conn.send(p)
                await conn.writer.drain()
        conn.writer.close()

    async def _upstream(
        self, conn: _Conn, reader: asyncio.StreamReader, up: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                p = await mqtt.read_packet(reader, self.config.max_packet_size)
            except mqtt.PacketTooLargeError:
                conn.send(mqtt.disconnect(RC_PACKET_TOO_LARGE, conn.level))
                await conn.writer.drain()
                return
            if p is None:
                return
            if p.type == mqtt.CONNECT:
                c = mqtt.parse_connect(p)
                conn.level, conn.client_id = c.level, c.client_id
            elif p.type == mqtt.PUBLISH:
                p = await self._publish(conn, p)
            elif p.type == mqtt.PUBREL and int.from_bytes(p.body[:2], "big") in conn.qos2_ids:
                pid = int.from_bytes(p.body[:2], "big")
                conn.qos2_ids.discard(pid)
                conn.send(mqtt.ack(mqtt.PUBCOMP, pid, 0, conn.level))
                continue
            if p is not None:
                up.write(p.encode())
                await up.drain()

    async def _publish(self, conn: _Conn, p: mqtt.Packet) -> mqtt.Packet | None:
        pub = mqtt.parse_publish(p, conn.level)
        alias = pub.prop(mqtt.PROP_TOPIC_ALIAS)
        topic = pub.topic
        if isinstance(alias, int):
            if topic:
                conn.aliases[alias] = topic
            else:
                topic = conn.aliases.get(alias, "")
        if not ft.is_file_topic(topic):
            if isinstance(alias, int):
                if pub.topic:
                    conn.unknown_upstream.discard(alias)
                elif alias in conn.unknown_upstream:
                    # mosquitto never saw this alias set: send the topic along.
                    conn.unknown_upstream.discard(alias)
                    return _with_topic(pub, topic).encode(conn.level)
            return p
        if isinstance(alias, int):
            conn.unknown_upstream.add(alias)
        try:
            await asyncio.wait_for(conn.connected.wait(), 10)
        except TimeoutError as e:
            raise mqtt.ProtocolError("file command before a successful CONNACK") from e
        if pub.qos == 1 and pub.packet_id is not None:
            await self._command(conn, pub, topic)
        elif pub.qos == 2 and pub.packet_id is not None:
            conn.qos2_ids.add(pub.packet_id)
            conn.send(
                mqtt.ack(mqtt.PUBREC, pub.packet_id, ft.RC_NO_MATCHING_SUBSCRIBERS, conn.level)
            )
        return None

    # -- emqx_ft --------------------------------------------------------------------

    def _respond(self, conn: _Conn, pub: mqtt.Publish, topic: str, result: ft.Result) -> None:
        """emqx_ft.erl publish_response/2."""
        assert pub.packet_id is not None
        body = jiffy_encode(ft.response(topic, pub.packet_id, result)).encode()
        rt = pub.prop(mqtt.PROP_RESPONSE_TOPIC)
        to = rt.decode() if isinstance(rt, bytes) else ft.default_response_topic(conn.client_id)
        cd = pub.prop(mqtt.PROP_CORRELATION_DATA)
        self.responder.publish(to, body, cd if isinstance(cd, bytes) else None)

    def _ack(self, conn: _Conn, pub: mqtt.Publish, code: int) -> None:
        assert pub.packet_id is not None
        conn.send(mqtt.ack(mqtt.PUBACK, pub.packet_id, code, conn.level))

    async def _command(self, conn: _Conn, pub: mqtt.Publish, topic: str) -> None:
        cmd = ft.parse(topic, pub.payload)
        if isinstance(cmd, ft.HookCrash):
            log.error("hook_callback_exception for %s: %s", topic, cmd.why)
            self._ack(conn, pub, ft.RC_NO_MATCHING_SUBSCRIBERS)
            return
        if isinstance(cmd, ft.Fin):
            await self._fin(conn, pub, topic, cmd)
            return
        result: ft.Result
        if isinstance(cmd, ft.Refused):
            log.info("client_violated_protocol %s: %s", topic, cmd.error)
            result = cmd.error
        elif isinstance(cmd, ft.Abort):
            result = ft.Ok()  # emqx_ft.erl on_abort/3
        elif isinstance(cmd, ft.Init):
            result = await asyncio.to_thread(self._init, conn.client_id, cmd)
        else:
            result = await asyncio.to_thread(self._segment, conn.client_id, cmd)
        self._respond(conn, pub, topic, result)  # ?ACK_AND_PUBLISH: publish, then PUBACK
        self._ack(conn, pub, ft.rc(result))

    def _init(self, client_id: str, cmd: ft.Init) -> ft.Result:
        storage = self.config.storage
        try:
            state = storage.load(client_id, cmd.file_id)
            result, _ = ft.on_init(state, cmd.meta)
            if isinstance(result, ft.Ok):
                if state.meta is None:
                    storage.store_filemeta(client_id, cmd.file_id, cmd.meta)
                else:
                    storage.touch_filemeta(client_id, cmd.file_id)
            else:
                log.warning("filemeta_conflict %s/%s", client_id, cmd.file_id)
        except OSError as e:
            return ft.Error(_posix(e))
        return result

    def _segment(self, client_id: str, cmd: ft.Segment) -> ft.Result:
        try:
            self.config.storage.store_segment(client_id, cmd.file_id, cmd.offset, cmd.payload)
        except OSError as e:
            return ft.Error(_posix(e))
        return ft.Ok()

    async def _fin(self, conn: _Conn, pub: mqtt.Publish, topic: str, cmd: ft.Fin) -> None:
        """emqx_ft.erl on_fin/5 + emqx_ft_storage_fs.erl assemble/4."""
        assert pub.packet_id is not None
        if pub.packet_id in conn.pending_fins:
            return  # with_responder/4: a retransmit while the first is handled
        key = (conn.client_id, cmd.file_id)
        mode_async = topic.startswith("$file-async/")
        fut = self.assemblies.get(key)  # lookup_local_assembler/1
        if fut is None:
            exported = await asyncio.to_thread(
                self.config.exporter.exported, conn.client_id, cmd.file_id
            )
            if exported:  # check_if_already_exported/2: acked through the responder
                self._respond(conn, pub, topic, ft.Ok())
                self._ack(conn, pub, ft.RC_SUCCESS)
                return
            fut = asyncio.ensure_future(asyncio.to_thread(self._assemble, conn.client_id, cmd))
            self.assemblies[key] = fut
            fut.add_done_callback(lambda _f: self.assemblies.pop(key, None))
        if mode_async:
            self._ack(conn, pub, ft.RC_SUCCESS)  # ack_if_async(async)
        conn.pending_fins.add(pub.packet_id)
        self._spawn(self._complete(conn, pub, topic, fut, mode_async))

    async def _complete(
        self,
        conn: _Conn,
        pub: mqtt.Publish,
        topic: str,
        fut: asyncio.Future[ft.Result],
        mode_async: bool,
    ) -> None:
        """emqx_ft.erl on_complete/5: PUBACK (unless async already did) and the result."""
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), self.config.assemble_timeout_s)
        except TimeoutError:
            result = ft.Error("timeout")
        except Exception as e:
            log.exception("assemble crashed")
            result = ft.Error("internal_error", str(e))
        finally:
            assert pub.packet_id is not None
            conn.pending_fins.discard(pub.packet_id)
        if isinstance(result, ft.Error):
            log.error("assemble_failed %s/%s: %s", conn.client_id, topic, result)
        if not mode_async:
            self._ack(conn, pub, ft.rc(result))
            with contextlib.suppress(ConnectionError):
                await conn.writer.drain()
        self._respond(conn, pub, topic, result)

    def _assemble(self, client_id: str, cmd: ft.Fin) -> ft.Result:
        """emqx_ft_assembler.erl: list fragments, check coverage, export, collect."""
        storage = self.config.storage
        state = storage.load(client_id, cmd.file_id)
        plan = ft.fin_plan(state, cmd.size)
        if isinstance(plan, ft.Error):
            return plan
        assert state.meta is not None

        def chunks() -> Iterator[bytes]:
            for offset, size in plan:
                yield storage.segment_path(client_id, cmd.file_id, offset, size).read_bytes()

        result = self.config.exporter.export(
            client_id, cmd.file_id, state.meta, chunks(), cmd.checksum
        )
        if isinstance(result, ft.Ok):
            storage.collect(client_id, cmd.file_id)  # maybe_garbage_collect/2
        return result


def _with_topic(pub: mqtt.Publish, topic: str) -> mqtt.Publish:
    return mqtt.Publish(
        pub.dup, pub.qos, pub.retain, topic, pub.packet_id, pub.properties, pub.payload
    )


def _posix(e: OSError) -> str:
    """A file:posix() atom as EMQX would report it (eacces, enospc, ...)."""
    import errno

    return errno.errorcode.get(e.errno or 0, "internal_error").lower()


def server_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """TLS for the clients."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx
