"""``python -m tests.emqx_ft``: run the emqx_ft stand-in in front of a mosquitto.

Prints one line ``ready`` on stdout once it listens; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.emqx_ft.exporters import Exporter, LocalExporter, S3Exporter, S3Target
from tests.emqx_ft.front import (
    ASSEMBLE_TIMEOUT_S,
    EMQX_MAX_PACKET_SIZE,
    GC_INTERVAL_S,
    Front,
    FrontConfig,
    Responder,
    server_context,
)
from tests.emqx_ft.storage import SegmentStorage


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.emqx_ft", description=__doc__)
    p.add_argument("--listen", type=_hostport, required=True, help="HOST:PORT for clients (TLS)")
    p.add_argument("--certfile", type=Path, required=True, help="the front's server certificate")
    p.add_argument("--keyfile", type=Path, required=True, help="its key")
    p.add_argument("--upstream", type=_hostport, required=True, help="mosquitto HOST:PORT")
    p.add_argument("--cafile", help="CA to verify mosquitto with (upstream TLS); plain if absent")
    p.add_argument("--responder-user", required=True, help="mosquitto user results are sent as")
    p.add_argument("--responder-password-file", type=Path, required=True)
    p.add_argument("--storage", type=Path, required=True, help="segments root")
    p.add_argument(
        "--exporter", required=True, help="local:DIR or s3:ENDPOINT:BUCKET (ENDPOINT a URL)"
    )
    p.add_argument("--s3-access-key", default="")
    p.add_argument("--s3-secret-key-file", type=Path)
    p.add_argument("--s3-min-part-size", type=int, default=5 * 1024 * 1024)
    p.add_argument("--max-packet-size", type=int, default=EMQX_MAX_PACKET_SIZE)
    p.add_argument("--assemble-timeout", type=float, default=ASSEMBLE_TIMEOUT_S)
    p.add_argument("--gc-interval", type=float, default=GC_INTERVAL_S)
    p.add_argument("--min-segments-ttl", type=int, default=300)
    p.add_argument("--max-segments-ttl", type=int, default=86400)
    return p


def make_exporter(args: argparse.Namespace) -> Exporter:
    kind, _, rest = args.exporter.partition(":")
    if kind == "local" and rest:
        return LocalExporter(Path(rest))
    if kind == "s3":
        endpoint, _, bucket = rest.rpartition(":")
        if not endpoint or not bucket or args.s3_secret_key_file is None:
            raise SystemExit("--exporter s3:ENDPOINT:BUCKET needs --s3-secret-key-file")
        secret = args.s3_secret_key_file.read_text().strip()
        target = S3Target(endpoint, bucket, args.s3_access_key, secret)
        return S3Exporter(target, min_part_size=args.s3_min_part_size)
    raise SystemExit(f"--exporter: expected local:DIR or s3:ENDPOINT:BUCKET, got {args.exporter!r}")


async def _run(args: argparse.Namespace) -> None:
    upstream_ssl = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    responder = Responder(
        args.upstream[0], args.upstream[1], args.responder_user,
        args.responder_password_file.read_text().strip(), args.cafile,
    )  # fmt: skip
    config = FrontConfig(
        listen=args.listen,
        upstream=args.upstream,
        server_ssl=server_context(args.certfile, args.keyfile),
        upstream_ssl=upstream_ssl,
        storage=SegmentStorage(
            args.storage, min_ttl_s=args.min_segments_ttl, max_ttl_s=args.max_segments_ttl
        ),
        exporter=make_exporter(args),
        max_packet_size=args.max_packet_size,
        assemble_timeout_s=args.assemble_timeout,
        gc_interval_s=args.gc_interval,
    )
    ready = asyncio.Event()
    serving = asyncio.create_task(Front(config, responder).serve(ready))
    await ready.wait()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, serving.cancel)
    try:
        await serving
    except asyncio.CancelledError:
        pass
    finally:
        responder.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
