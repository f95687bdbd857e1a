"""Instructions per echoed frame in the lean poll step, with and without its inline read.

A 370-byte frame (a Twilio media message) goes from a client socket to an echo protocol on a
real loopback TCP connection and back, N times, one at a time, in one process. valgrind's
callgrind counts the instructions; the difference between two values of N divided by the
frames between them is the cost of one frame (client side included, the same in both), free
of start-up and of the machine's other load. The inline read is the only difference:

    python benchmarks/pollstep.py            # needs valgrind
    python benchmarks/pollstep.py --frames 2000,4000

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


def run_echo(inline: bool, frames: int) -> None:
    """The measured program: echo ``frames`` frames through an EPollReactor with the lean poll step."""
    sys.path.insert(0, str(REPO))
    from twisted.internet import protocol
    from twisted.internet.epollreactor import EPollReactor

    from voicebridge import leanloop

    if not inline:
        leanloop._SERVER = type("NoInlineRead", (), {})  # no transport is of this type: every event is dispatched
    reactor = EPollReactor()
    leanloop.install(reactor)

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            leanloop.write_now(self.transport, data)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    for _ in range(20):
        reactor.doIteration(0.01)  # the accept
    for _ in range(frames):
        client.send(FRAME)
        echoed = 0
        while echoed < len(FRAME):
            reactor.doIteration(0.1)
            try:
                echoed += len(client.recv(4096))
            except BlockingIOError:
                pass


def instructions(inline: bool, frames: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, "--run"]
            + ["inline" if inline else "dispatch", str(frames)],
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise SystemExit(f"pollstep: no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="3000,6000", help="two frame counts (default 3000,6000)")
    parser.add_argument("--run", nargs=2, metavar=("MODE", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run_echo(args.run[0] == "inline", int(args.run[1]))
        return 0
    if not shutil.which("valgrind"):
        print("pollstep: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    low, high = (int(n) for n in args.frames.split(","))
    per_frame = {}
    for inline in (True, False):
        counts = [instructions(inline, n) for n in (low, high)]
        per_frame[inline] = (counts[1] - counts[0]) / (high - low)
    print("instructions per echoed frame (client and server, one process):")
    print(f"  inline read:       {per_frame[True]:8.0f}")
    print(f"  dispatched:        {per_frame[False]:8.0f}")
    print(f"  saved per frame:   {per_frame[False] - per_frame[True]:8.0f} ({1 - per_frame[True] / per_frame[False]:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
