"""A hostile client: raw sockets that send exactly the bytes a test wants, valid or not.

The simulated Twilio (voicebridge.tools.twiliosim) only speaks correct protocol; this speaks whatever
the test writes: half a request, a binary frame, invalid UTF-8, a message over the size limit,
or nothing at all. It blocks, with a timeout on every read, so a test can say what came back.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def connect(port: int, timeout: float = 5.0, rcvbuf: int | None = None, tls=None) -> socket.socket:
    """A connection to the daemon on loopback; ``tls``: an ssl.SSLContext (the server is voice.example.test)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="voice.example.test")
    return sock


def read_response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or the timeout passes)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except (socket.timeout, ConnectionResetError):
        pass
    return b"".join(chunks)


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes as one HTTP client would, and return the raw answer."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout)


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    """One RFC 6455 frame as a client sends it (masked unless told otherwise)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + struct.pack(">H", length)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class RawStream:
    """A WebSocket to /twilio-media over a blocking socket, frames written by hand."""

    def __init__(self, port: int, path="/twilio-media", headers: dict | None = None, timeout=5.0, rcvbuf=None, tls=None):
        self.sock = connect(port, timeout, rcvbuf, tls)
        self.timeout = timeout
        self._buffer = b""
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = self._read_until(b"\r\n\r\n")
        self.response = head
        self.status = status_of(head)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {self._buffer[:200]!r}")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(marker, 1)
        return head + marker

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-frame")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def rest(self, timeout: float = 2.0) -> bytes:
        """What follows the response head, until the server closes (the body of a refusal)."""
        return self._buffer + read_response(self.sock, timeout)

    # Sending.

    def send(self, opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> None:
        self.sock.sendall(frame(opcode, payload, fin, mask))

    def text(self, payload: bytes | str) -> None:
        self.send(TEXT, payload.encode() if isinstance(payload, str) else payload)

    # Receiving.

    def recv_frame(self, timeout: float | None = None) -> tuple[int, bytes]:
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        b0, b1 = self._read_exactly(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._read_exactly(8))
        return b0 & 0x0F, self._read_exactly(length)

    def next_message(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next text or binary frame (or close), answering pings on the way."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == PING:
                self.send(PONG, payload)
            elif opcode != PONG:
                return opcode, payload

    def until_close(self, timeout: float = 10.0, answer_pings: bool = True) -> tuple[int | None, str, list]:
        """Read frames until the server's close frame (or the connection ends): (code, reason, data frames)."""
        deadline = time.monotonic() + timeout
        frames = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no close within {timeout}s; got {len(frames)} frames")
            try:
                opcode, payload = self.recv_frame(left)
            except socket.timeout:
                raise TimeoutError(f"no close within {timeout}s; got {len(frames)} frames") from None
            except OSError:
                return None, "", frames
            if opcode == CLOSE:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                try:
                    self.send(CLOSE, payload[:2])
                except OSError:
                    pass
                return code, payload[2:].decode("utf-8", "replace"), frames
            if opcode == PING and answer_pings:
                self.send(PONG, payload)
            elif opcode in (TEXT, BINARY):
                frames.append(payload)

    def is_closed_by_server(self, timeout: float = 5.0) -> bool:
        """True when the server ends the TCP connection within the timeout (any frames before are ignored)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except socket.timeout:
            return False
        except OSError:
            pass
        return True


# Floods: bounded loops of abuse, for the flood test and benchmarks/flood.py.

BAD_HANDSHAKES = ["unsigned", "forged", "no-upgrade", "garbage", "half-request"]


def bad_handshake(port: int, kind: str, timeout: float = 5.0) -> int | None:
    """One bad handshake of ``kind`` (see BAD_HANDSHAKES): the status it got; None for half a request, sent and left."""
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    if kind == "unsigned":
        raw = f"GET /twilio-media HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n".encode()
    elif kind == "forged":
        raw = f"GET /twilio-media HTTP/1.1\r\nHost: x\r\n{upgrade}X-Twilio-Signature: Zm9yZ2Vk\r\n\r\n".encode()
    elif kind == "no-upgrade":
        raw = b"GET /twilio-media HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    elif kind == "garbage":
        raw = os.urandom(200).replace(b"\n", b"") + b"\r\n\r\n"
    else:  # half a request, then gone
        raw = b"GET /twilio-media HTTP/1.1\r\nHost: x\r\nUpg"
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        if kind == "half-request":
            return None
        return status_of(read_head(sock, timeout))


def read_head(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """The response head (a kept-alive connection would not end the response by closing)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


JUNK_FRAMES = [
    b"{not json",
    b"[1,2,3]",
    b'{"event":"media","streamSid":"MZforeign","media":{"payload":"AAAA"}}',
    b'{"event":"media","streamSid":"MZflood","media":{"payload":"!!not base64!!"}}',
    b'{"event":"transcription","streamSid":"MZflood"}',
    b'{"event":"start","streamSid":"MZflood"}',
]


def junk_stream(port: int, signature: str, frames: int, call_sid: str) -> int:
    """A signed stream that starts, then sends ``frames`` junk text frames and stops; returns frames sent."""
    with RawStream(port, headers={"X-Twilio-Signature": signature}) as stream:
        if stream.status != 101:
            raise ConnectionError(f"junk stream refused: {stream.response[:200]!r}")
        stream.text(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        start = {
            "event": "start",
            "streamSid": "MZflood",
            "start": {"streamSid": "MZflood", "callSid": call_sid, "accountSid": "AC1", "tracks": ["inbound"]},
        }
        stream.text(json.dumps(start))
        batch = b"".join(frame(TEXT, JUNK_FRAMES[i % len(JUNK_FRAMES)]) for i in range(frames))
        stream.sock.sendall(batch)
        stream.text(b'{"event":"stop","streamSid":"MZflood"}')
        stream.until_close(30)
    return frames
