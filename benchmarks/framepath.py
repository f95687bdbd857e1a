"""Microseconds of Python per echoed frame on the daemon's own path, and what each part of it costs.

A Twilio media frame is handed to the server protocol's ``dataReceived`` as the poll step
would hand it (a real daemon Site, a real upgraded and started stream), N times in a row: the
fast path, the ``Call``, the echo handler and the echo's framing run as they do in production.
The echo goes to a socket that takes it without a system call, so what is timed is the Python;
``real send`` adds the one ``send`` per frame the daemon makes. Parts are measured by
switching one stage off at a time, so each row is the full path minus that stage:

- ``handler does nothing``: the send side (handler, ``send_audio``, framing, ``write_now``) off;
- ``framing only``: the fast path delivers the payload to nothing (no ``Call`` at all).

Best of 5 runs, the garbage collector off, one process, warm caches: a floor to compare
changes by, not the CPU of a loaded daemon (``bench.py`` measures that).

    python benchmarks/framepath.py [--frames N]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import instructions


class _TakesAll:
    """A socket that takes every byte at once, with no system call."""

    def send(self, data):
        return len(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000, help="frames per run (default 20000)")
    args = parser.parse_args(argv)

    from twisted.internet import tcp

    reactor, client, frame, _ = instructions.serve("voicebridge")
    transport = next(s for s in reactor._selectables.values() if type(s) is tcp.Server)
    protocol, real_socket = transport.protocol, transport.socket
    handler = protocol.call.handler

    def drain():
        try:
            while client.recv(1 << 20):
                pass
        except BlockingIOError:
            pass

    def run(real_send: bool) -> float:
        transport.socket = real_socket if real_send else _TakesAll()
        received = protocol.dataReceived
        started = time.perf_counter()
        for i in range(args.frames):
            received(frame)
            if real_send and i % 50 == 49:
                drain()
        elapsed = time.perf_counter() - started
        transport.socket = real_socket
        drain()
        return elapsed / args.frames * 1e6

    def best(real_send: bool = False) -> float:
        return min(run(real_send) for _ in range(5))

    gc.disable()
    rows = [("full path", best())]
    on_media, sink = handler.on_media, protocol.text_sink
    handler.on_media = lambda audio, timestamp: None
    rows.append(("handler does nothing", best()))
    handler.on_media = on_media
    protocol.text_sink = lambda payload: None
    rows.append(("framing only", best()))
    protocol.text_sink = sink
    rows.append(("real send", best(real_send=True)))
    # Each row is 5 runs; the Call saw every frame but those of "framing only", and echoed those
    # of "full path" and "real send": anything else means the path measured was not the daemon's.
    seen, echoed = protocol.call.frames_in, protocol.call.frames_out
    if (seen, echoed) != (args.frames * 15, args.frames * 10):
        print(f"framepath: the call saw {seen} frames and echoed {echoed}: not the path meant", file=sys.stderr)
        return 1

    print(f"Python per echoed frame, {len(frame)}-byte masked media frame (best of 5 x {args.frames}):")
    for name, micros in rows:
        print(f"  {name:22} {micros:6.2f} us")
    full, quiet, framing = rows[0][1], rows[1][1], rows[2][1]
    print(f"  -> framing in {framing:.2f}, Call and media_fields {quiet - framing:.2f}, send side {full - quiet:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
