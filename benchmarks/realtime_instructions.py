"""Instructions per frame of an AI call (``openai-realtime`` against a fake provider) against an echoed one.

CPU time on a machine shared with other engineers moves too much to compare paths (and under
heavy load the daemon's share of its core caps what it can do); instruction counts do not. As
``benchmarks/instructions.py`` does for echo, one frame at a time goes from a Twilio client
socket through the daemon's own Site, in one process, over loopback TCP; callgrind counts the
instructions, and the difference between two frame counts divided by the frames between them is
the cost of one frame, start-up excluded.

- ``echo``: the frame through the daemon and back (media);
- ``openai-realtime``: the frame through the daemon to the fake provider
  (``benchmarks/fake_provider.py``, in the same process) as ``input_audio_buffer.append``, its
  20 ms delta back through the daemon to the client as ``media`` + ``mark``;
- ``openai-realtime-autobahn``: the same with the provider link on Autobahn's general client path;
- ``provider``: the client talking to the fake provider directly (append in, delta out), so the
  provider's own share can be subtracted from the AI figures.

    python benchmarks/realtime_instructions.py         # needs valgrind
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = ("echo", "openai-realtime", "openai-realtime-autobahn", "provider")
SID = "MZ" + "1" * 32


def turn(reactor, timeout: float) -> None:
    """One reactor round: timed calls too (the provider link's connect uses them), not only I/O."""
    reactor.runUntilCurrent()
    reactor.doIteration(timeout)


def _recv_until(reactor, client, expect: int) -> bytes:
    got = b""
    while len(got) < expect:
        turn(reactor, 0.1)
        try:
            got += client.recv(65536)
        except BlockingIOError:
            pass
    return got


def _provider(reactor):
    sys.path.insert(0, str(HERE))
    import itertools

    from autobahn.twisted.websocket import WebSocketServerFactory
    from fake_provider import Provider

    factory = WebSocketServerFactory("ws://127.0.0.1/v1/realtime")
    factory.setProtocolOptions(autoPingInterval=0)
    factory.protocol = Provider
    factory.calls = itertools.count(1)
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


def _daemon(reactor, handler: str, provider_port: int | None):
    from voicebridge.daemon.tap import Options, makeService

    args = ["--listen", "tcp:0:interface=127.0.0.1", "--handler", handler.replace("-autobahn", "")]
    if provider_port is not None:
        args += ["--realtime-url", f"ws://127.0.0.1:{provider_port}/v1/realtime"]
    options = Options()
    options.parseOptions(args)
    return reactor.listenTCP(0, makeService(options, reactor).site, interface="127.0.0.1")


def serve(variant: str):
    """(reactor, client socket, the frame to send, a function: frame number -> bytes to wait for)."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    os.environ["OPENAI_API_KEY"] = "sk-instructions"
    from instructions import open_stream
    from twisted.internet.epollreactor import EPollReactor

    from voicebridge.fastpath import frames as wsframes
    from voicebridge.fastpath import leanloop
    from voicebridge.twilio import messages

    if variant == "openai-realtime-autobahn":
        import autobahn_client_path  # noqa: F401  (switches the lean client path off)
    reactor = EPollReactor()
    leanloop.install(reactor)
    reactor.getThreadPool().start()  # the provider link's name resolution runs there; the reactor is turned by hand
    provider = _provider(reactor) if variant != "echo" else None
    mask = b"\x01\x02\x03\x04"
    if variant == "provider":
        client = socket.create_connection(("127.0.0.1", provider.getHost().port))
        client.setblocking(False)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        client.send(
            (
                "GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            reactor.doIteration(0.1)
            try:
                head += client.recv(65536)
            except BlockingIOError:
                pass
        for _ in range(20):
            reactor.doIteration(0.01)
        try:
            client.recv(65536)  # session.created
        except BlockingIOError:
            pass
        import base64

        append = b'{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(bytes(160)) + b'"}'
        delta = (
            b'{"type":"response.output_audio.delta","event_id":"ev","response_id":"resp_1","item_id":"item_1",'
            b'"output_index":0,"content_index":0,"delta":"' + base64.b64encode(bytes(160)) + b'"}'
        )
        length = len(wsframes.text_frame(delta))
        return reactor, client, wsframes.masked_frame(wsframes.FIN_TEXT, append, mask), lambda i: length
    port = _daemon(reactor, variant, provider.getHost().port if provider else None)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    for _ in range(20):
        reactor.doIteration(0.01)
    frame, media_length = open_stream(reactor, client)
    for _ in range(100):
        turn(reactor, 0.01)  # the provider link opens, the session is updated
    if variant == "echo":
        return reactor, client, frame, lambda i: media_length
    return reactor, client, frame, lambda i: media_length + len(wsframes.text_frame(messages.mark(SID, f"vb-rt-{i}")))


def run(variant: str, frames: int) -> None:
    reactor, client, frame, expect = serve(variant)
    for i in range(1, frames + 1):
        client.send(frame)
        _recv_until(reactor, client, expect(i))
    reactor.getThreadPool().stop()


def instructions(variant: str, frames: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--run",
                variant,
                str(frames),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise SystemExit(f"realtime_instructions: no count from valgrind:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="1000,2000", help="two frame counts (default 1000,2000)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--run", nargs=2, metavar=("VARIANT", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run(args.run[0], int(args.run[1]))
        return 0
    if not shutil.which("valgrind"):
        print("realtime_instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    low, high = (int(n) for n in args.frames.split(","))
    per_frame = {}
    print("instructions per frame (client, daemon and, for AI calls, the fake provider: one process):")
    for variant in args.variants.split(","):
        counts = [instructions(variant, n) for n in (low, high)]
        per_frame[variant] = (counts[1] - counts[0]) / (high - low)
        print(f"  {variant:26} {per_frame[variant]:9.0f}", flush=True)
    if {"echo", "openai-realtime", "provider"} <= per_frame.keys():
        for name in ("openai-realtime", "openai-realtime-autobahn"):
            if name in per_frame:
                bridge = per_frame[name] - per_frame["provider"]
                print(f"  {name}, the provider's share taken off: {bridge:.0f} ({bridge / per_frame['echo']:.2f} x echo)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
