"""The HTTP connections voicebridge serves, bounded in time and size.

twisted.web on its own reads a request body of any size (into a temporary file), lets a client
that sends one byte a minute hold a connection for as long as it likes, and answers an oversized
header with a bare ``400`` or a silent close. Here:

- a request (line, headers and body) must arrive complete within ``handshake_timeout`` of the
  connection, or of its first byte on a kept-alive connection: else ``408`` and close; a
  kept-alive connection idle for ``handshake_timeout`` after a request is closed;
- a body over ``max_body_size`` is answered ``413`` at once, before it is read when
  ``Content-Length`` announces it; bodies live in memory, never in temporary files;
- at most 100 headers and 16 KiB of request line plus headers; beyond, ``431``/``414``, and a
  malformed request gets ``400`` with what was wrong;
- the access log names the path and masks phone numbers in the query (GET webhooks carry them).

Error answers go out with ``Connection: close``; the connection stops sending and then discards
what the client still sends for a moment, so the client reads the answer rather than a reset.
"""

from __future__ import annotations

from io import BytesIO

from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from voicebridge.observe.logs import mask_url, printable

log = Logger(namespace="voicebridge.http")

MAX_HEADERS = 100
LINGER_SECONDS = 2.0


class BoundedRequest(Request):
    """A request whose body is bounded, and kept in memory."""

    _refused = False
    _received = 0

    def gotLength(self, length):
        limit = self.channel.site.limits.max_body_size
        self.content = BytesIO()
        if length is not None and length > limit:
            # Answer before the body is sent; a client waiting for "100 Continue" never gets it.
            self.requestHeaders.removeHeader(b"expect")
            self._too_large(f"Content-Length {length}", limit)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        limit = self.channel.site.limits.max_body_size
        if self._received > limit:
            self._too_large(f"over {limit} bytes received", limit)
            return
        self.content.write(data)

    def process(self):
        if not self._refused:
            super().process()

    def _too_large(self, size: str, limit: int) -> None:
        self._refused = True
        self.channel.refuse(
            413,
            b"Content Too Large",
            "body-too-large",
            f"the request body ({size}) is over the limit of {limit} bytes (--max-body-size); "
            "Twilio's webhook forms are a few kilobytes",
        )


class BoundedChannel(HTTPChannel):
    """HTTP/1.1 with a deadline per request and bounded headers."""

    maxHeaders = MAX_HEADERS
    _deadline = None
    _linger = None
    _receiving = True  # between requests or inside one, as opposed to handling a complete one
    _closing = False

    def connectionMade(self):
        super().connectionMade()
        self._arm()

    def dataReceived(self, data):
        if self._closing:
            return  # lingering after an error answer: what the client still sends is dropped
        if self._deadline is None and self._receiving:
            self._arm()
        super().dataReceived(data)

    def lineReceived(self, line):
        if not self._closing:  # the rest of a buffer that held a bad request is not parsed
            super().lineReceived(line)

    def rawDataReceived(self, data):
        if not self._closing:
            super().rawDataReceived(data)

    def allContentReceived(self):
        self._disarm()
        self._receiving = False
        super().allContentReceived()
        if self.transport is None:
            self._upgraded()

    def _upgraded(self) -> None:
        """The request took the connection over (a WebSocket upgrade): this channel is done with it.

        Autobahn leaves the request, never finished, in ``requests``, and the request points back
        here: a cycle only the collector frees. Dropping it and the idle timer frees both at once.
        """
        self.setTimeout(None)
        self.requests = []

    def requestDone(self, request):
        self._receiving = True
        super().requestDone(request)
        if self.persistent and not self._closing and self.transport is not None:
            # Kept alive and idle: it may wait for the next request as long as a client may take to
            # send one (twisted.web's own idle limit is 60 s), then it is closed quietly.
            self.setTimeout(self.site.limits.handshake_timeout)

    def timeoutConnection(self):
        """Idle past the limit between requests: close (no 408: the client sent nothing to answer)."""
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def connectionLost(self, reason):
        self._disarm()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    # The deadline.

    def _arm(self) -> None:
        self._deadline = self.callLater(self.site.limits.handshake_timeout, self._timed_out)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _timed_out(self) -> None:
        self._deadline = None
        self.refuse(
            408,
            b"Request Timeout",
            "request-timeout",
            f"no complete request within {self.site.limits.handshake_timeout:g}s of connecting (--handshake-timeout)",
        )

    # Precise answers for what twisted.web would answer with a bare 400 or a silent close.

    def _respondToBadRequestAndDisconnect(self):
        if getattr(self, "_receivedHeaderCount", 0) > self.maxHeaders:
            self.refuse(431, b"Request Header Fields Too Large", "too-many-headers", f"more than {self.maxHeaders} headers")
        elif getattr(self, "_receivedHeaderSize", 0) > self.totalHeadersSize:
            self.refuse(
                431,
                b"Request Header Fields Too Large",
                "headers-too-large",
                f"request line and headers are over {self.totalHeadersSize} bytes",
            )
        else:
            self.refuse(
                400,
                b"Bad Request",
                "malformed-request",
                "the request line, a header (control characters, a bad Content-Length or Transfer-Encoding) "
                "or the chunked body is malformed",
            )

    def lineLengthExceeded(self, line):
        if not self.requests:
            self.refuse(414, b"URI Too Long", "request-line-too-long", f"the request line is over {self.MAX_LENGTH} bytes")
        else:
            self.refuse(
                431, b"Request Header Fields Too Large", "header-too-large", f"a header line is over {self.MAX_LENGTH} bytes"
            )

    def refuse(self, status: int, phrase: bytes, diagnosis: str, message: str) -> None:
        """Answer ``status`` with ``message``, then close (lingering briefly so the client can read it)."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._disarm()
        self.setTimeout(None)
        peer = self.transport.getPeer()
        log.warn(
            "http {status} from {client}: {message}",
            event_name="http.refused",
            status=status,
            reason=diagnosis,
            message=message,
            client=getattr(peer, "host", str(peer)),
        )
        body = f"{status}: {message}\n".encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nServer: voicebridge\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"X-Voicebridge-Diagnosis: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, phrase, diagnosis.encode("ascii"), len(body), body)
        )
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            self.transport.loseConnection()
            return
        half_close()
        self._linger = self.callLater(LINGER_SECONDS, self.transport.abortConnection)


class BoundedSite(Site):
    """A Site serving ``BoundedChannel``s (HTTP/1.1 only) with ``BoundedRequest``s, under ``limits``."""

    protocol = BoundedChannel
    requestFactory = BoundedRequest

    def __init__(self, resource, limits, show_numbers: bool = False, **kwargs):
        # The webhook parses its own form; twisted.web's multipart parser is surface nobody needs.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.limits = limits
        self.show_numbers = show_numbers
        self.client_of = None  # request -> the caller's address (web/site.py: PublicURLs.client)

    def log(self, request):
        """The access log, as structured events; phone numbers in a query string are masked."""
        peer = getattr(request.getClientAddress(), "host", "-")
        client = peer
        if self.client_of is not None:
            try:  # behind a trusted proxy: the caller it forwarded for, as webhook.refused names it
                client = self.client_of(request)
            except Exception:  # noqa: BLE001 - a request too broken to read still gets its access line
                client = peer
        log.info(
            "{method} {uri} {status} {length} client={client}",
            event_name="http.access",
            method=printable(request.method, 16),
            uri=printable(mask_url(request.uri.decode("latin-1"), self.show_numbers), 300),
            status=request.code,
            length=request.sentLength or "-",
            client=client,
            peer=peer,
        )
