"""Instructions per echoed frame: the daemon's whole echo path, and the lean poll step's inline read.

A frame goes from a client socket to the server on a real loopback TCP connection and back, N
times, one at a time, in one process. valgrind's callgrind counts the instructions; the
difference between two values of N divided by the frames between them is the cost of one frame
(the client's side included, the same for every variant), free of start-up and of the
machine's other load, and the same from run to run: a change of a few percent shows, where
CPU time on a shared machine moves by ten.

- ``voicebridge``: a masked Twilio media frame through the daemon's own Site, WebSocket fast
  path, Call and echo handler, and its echo back;
- ``raw``: a 370-byte frame through a bare echo protocol on the same lean poll step;
- ``voicebridge-dispatch`` and ``raw-dispatch``: the same without the poll step's inline read
  (every event through Twisted's ``_doReadOrWrite``);
- ``voicebridge-plain``: the daemon with ``--no-fast-path`` (plain Twisted and Autobahn), what
  it serves on when the start-up self-check turns the fast path off.

    python benchmarks/instructions.py            # needs valgrind
    python benchmarks/instructions.py --frames 2000,4000 --variants voicebridge

docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAME = b"x" * 370


VARIANTS = ("voicebridge", "voicebridge-dispatch", "raw", "raw-dispatch", "voicebridge-plain")


def _raw_server(reactor):
    from twisted.internet import protocol

    from voicebridge.fastpath import leanloop

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            leanloop.write_now(self.transport, data)

    return reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")


def _voicebridge_server(reactor, plain=False):
    """The daemon's Site as ``twist voicebridge`` builds it (tap.makeService), on a port of the test's own."""
    from voicebridge.daemon.tap import Options, makeService

    options = Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"] + (["--no-fast-path"] if plain else []))
    return reactor.listenTCP(0, makeService(options, reactor).site, interface="127.0.0.1")


def _exchange(reactor, client, data: bytes, expect: int) -> bytes:
    """Send ``data``, turn the reactor until ``expect`` bytes came back."""
    client.send(data)
    got = b""
    while len(got) < expect:
        reactor.doIteration(0.1)
        try:
            got += client.recv(65536)
        except BlockingIOError:
            pass
    return got


def open_stream(reactor, client) -> tuple[bytes, int]:
    """Upgrade ``client`` to a started Twilio stream on the daemon: (a masked media frame, its echo's length)."""
    from voicebridge.fastpath import frames as wsframes
    from voicebridge.twilio import messages

    key = "dGhlIHNhbXBsZSBub25jZQ=="
    upgrade = (
        "GET /twilio-media HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    client.send(upgrade)
    head = b""
    while b"\r\n\r\n" not in head:
        reactor.doIteration(0.1)
        try:
            head += client.recv(65536)
        except BlockingIOError:
            pass
    assert head.startswith(b"HTTP/1.1 101"), head
    mask = b"\x01\x02\x03\x04"
    sid = "MZ" + "1" * 32
    for opening in (messages.twilio_connected(), messages.twilio_start(sid, "CA" + "2" * 32, "AC" + "3" * 32, {}, 1)):
        client.send(wsframes.masked_frame(wsframes.FIN_TEXT, opening, mask))
    for _ in range(20):
        reactor.doIteration(0.01)
    frame = wsframes.masked_frame(wsframes.FIN_TEXT, messages.twilio_media(sid, bytes(160), 1, 20, 3), mask)
    return frame, len(wsframes.text_frame(messages.media(sid, bytes(160))))


def serve(variant: str):
    """A lean-loop EPollReactor serving ``variant``, and a connected client: (reactor, client, frame, echo length)."""
    sys.path.insert(0, str(REPO))
    from twisted.internet.epollreactor import EPollReactor

    from voicebridge.fastpath import leanloop

    if variant.endswith("-dispatch"):
        leanloop._SERVER = type("NoInlineRead", (), {})  # no transport is of this type: every event is dispatched
    reactor = EPollReactor()
    plain = variant == "voicebridge-plain"
    if not plain:
        leanloop.install(reactor)
    daemon = variant.startswith("voicebridge")
    port = _voicebridge_server(reactor, plain) if daemon else _raw_server(reactor)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    for _ in range(20):
        reactor.doIteration(0.01)  # the accept
    frame, expect = open_stream(reactor, client) if daemon else (FRAME, len(FRAME))
    return reactor, client, frame, expect


def run_echo(variant: str, frames: int) -> None:
    """The measured program: echo ``frames`` frames through an EPollReactor with the lean poll step."""
    reactor, client, frame, expect = serve(variant)
    for _ in range(frames):
        _exchange(reactor, client, frame, expect)


def instructions(variant: str, frames: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, "--run"]
            + [variant, str(frames)],
            capture_output=True,
            text=True,
            check=True,
            # A fixed hash seed: with a random one, dictionaries probe differently in every
            # process and the count per frame moves by about 2%.
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise SystemExit(f"instructions: no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="3000,6000", help="two frame counts (default 3000,6000)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--run", nargs=2, metavar=("VARIANT", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run_echo(args.run[0], int(args.run[1]))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        parser.error(f"unknown variant(s) {sorted(set(variants) - set(VARIANTS))}")
    if not shutil.which("valgrind"):
        print("instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    low, high = (int(n) for n in args.frames.split(","))
    per_frame = {}
    print("instructions per echoed frame (client and server, one process):")
    for variant in variants:
        counts = [instructions(variant, n) for n in (low, high)]
        per_frame[variant] = (counts[1] - counts[0]) / (high - low)
        print(f"  {variant:21} {per_frame[variant]:8.0f}", flush=True)
    for name in ("voicebridge", "raw"):
        if name in per_frame and f"{name}-dispatch" in per_frame:
            saved = per_frame[f"{name}-dispatch"] - per_frame[name]
            print(f"  {name}: the inline read saves {saved:.0f} per frame ({saved / per_frame[f'{name}-dispatch']:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
