"""The dock's uploader in a process of its own, to be SIGKILLed by the crash tests.

``python -m tests.integration.upload_worker HOME PORT CA PASSWORD PLATFORM_KEY
SEGMENT BYTES_PER_S [--drain SECONDS]``: uploads the station at HOME through the
broker on 127.0.0.1:PORT (TLS with CA, user dock-01) until killed, or with
``--drain`` until everything is receipted (exit 0) or the time is up (exit 3).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from hashing.note import NoteVerifier
from hashing.station import Station
from uploader.link import MqttSettings
from uploader.sender import Uploader, UploadSettings
from uploader.throttle import Bandwidth

STATION = "dock-01"


def main(argv: list[str]) -> int:
    home, port, ca, password, platform_key, segment, rate, *rest = argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    station = Station.open(Path(home))
    settings = UploadSettings(
        segment_bytes=int(segment),
        window_segments=4,
        bandwidth=Bandwidth(int(rate), (), 0),
        platform_keys=(NoteVerifier.parse(platform_key),),
        result_timeout_s=3.0,
        receipt_timeout_s=3.0,
    )
    mqtt = MqttSettings(
        "127.0.0.1",
        int(port),
        f"evidock-{STATION}",
        username=STATION,
        password=password,
        tls=True,
        ca_file=ca,
        reconnect_min_s=1,
        reconnect_max_s=2,
    )
    uploader = Uploader(station, settings, mqtt)
    uploader.start()
    try:
        if rest[:1] == ["--drain"]:
            return 0 if uploader.drain(float(rest[1])) else 3
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print("started", flush=True)
        stop.wait()
        return 0
    finally:
        uploader.close()
        station.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
