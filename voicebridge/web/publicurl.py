"""Where Twilio reaches this daemon: the public base URL, the stream URL, the real client.

Signatures cover the URL Twilio used, which behind a proxy is not the URL the daemon sees.
`--public-url` is the source of truth; without it the request tells, and forwarding headers
count only from proxies the operator trusts. Pure: it works on a `RequestView`, not a request.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class PublicURLError(ValueError):
    pass


def parse_public_url(url: str) -> str:
    """Validate ``--public-url`` and return it without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise PublicURLError(f"--public-url {url!r} must be an http(s):// URL with a host, e.g. https://voice.example.com")
    if parts.query or parts.fragment:
        raise PublicURLError(f"--public-url {url!r} must not carry a query string or fragment")
    if parts.username or parts.password:
        raise PublicURLError("--public-url must not carry credentials")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError:
        raise PublicURLError(f"--public-url {url!r} has a port that is not 0-65535") from None
    path = parts.path.rstrip("/")
    for route in DAEMON_ROUTES:
        if path.endswith(route):
            base = url.rstrip("/")[: -len(route)]
            raise PublicURLError(
                f"--public-url {url!r} ends in {route}, a route of the daemon (a pasted webhook URL?): every signature "
                f"would be checked against {base}{route}{route}, and the stream url would end in {route}/twilio-media. "
                f"Use --public-url {base}"
            )
    return url.rstrip("/")


# The daemon's own routes: a base URL ending in one is a route URL pasted by mistake.
DAEMON_ROUTES = ("/voice", "/twilio-media", "/connect-action")


class TrustedProxies:
    """Addresses and networks whose X-Forwarded-* headers are believed."""

    def __init__(self, specs=()):
        self.networks = []
        for spec in specs:
            try:
                self.networks.append(ipaddress.ip_network(spec.strip(), strict=False))
            except ValueError:
                raise PublicURLError(f"trusted proxy {spec!r} is not an IP address or CIDR network") from None

    def __bool__(self):
        return bool(self.networks)

    def __contains__(self, address) -> bool:
        if not self.networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


@dataclass(frozen=True)
class RequestView:
    """The parts of an HTTP request that decide its public URL."""

    secure: bool
    host: str | None
    peer: str
    uri: str
    forwarded_proto: str | None = None
    forwarded_host: str | None = None
    forwarded_for: str | None = None

    @classmethod
    def of(cls, request) -> RequestView:
        """Read a twisted.web request (duck-typed, so this module stays free of Twisted)."""
        return cls(
            secure=request.isSecure(),
            host=header(request, b"host"),
            peer=getattr(request.getClientAddress(), "host", "") or "",
            uri=request.uri.decode("latin-1"),
            forwarded_proto=header(request, b"x-forwarded-proto"),
            forwarded_host=header(request, b"x-forwarded-host"),
            forwarded_for=header(request, b"x-forwarded-for"),
        )


def header(request, name: bytes) -> str | None:
    """One request header as text (latin-1, as HTTP defines), or None."""
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def _first(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(",")[0].strip() or None


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class PublicURLs:
    """Computes the URLs Twilio used for a request, and the stream URL to give it."""

    def __init__(self, public_url: str | None, trusted: TrustedProxies, stream_path: str = "/twilio-media"):
        self.public_url = parse_public_url(public_url) if public_url else None
        self.trusted = trusted
        self.stream_path = stream_path

    def base(self, view: RequestView) -> str:
        """``scheme://host[:port][/prefix]`` as Twilio sees this daemon; raises PublicURLError."""
        if self.public_url:
            return self.public_url
        scheme = "https" if view.secure else "http"
        host = view.host
        if view.peer in self.trusted:
            proto = _first(view.forwarded_proto)
            if proto:
                scheme = proto.lower()
            host = _first(view.forwarded_host) or host
        if scheme not in ("http", "https"):
            raise PublicURLError(f"X-Forwarded-Proto {scheme!r} is not http or https")
        match = _HOST.match(host) if host else None
        if not match or (match.group(2) and int(match.group(2)[1:]) > 65535):
            raise PublicURLError(f"Host header {host!r:.80} is missing or not a host name")
        return f"{scheme}://{host}"

    def request_url(self, view: RequestView) -> str:
        """The full URL of this request, query string included (what webhook signatures cover)."""
        return self.base(view) + view.uri

    def stream_url(self, view: RequestView) -> str:
        base = self.base(view)
        scheme, rest = base.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest + self.stream_path

    def client(self, view: RequestView) -> str:
        """The caller's address: the peer, or the nearest untrusted hop of X-Forwarded-For."""
        if view.peer not in self.trusted or not view.forwarded_for:
            return view.peer
        hops = [h.strip() for h in view.forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in self.trusted:
                return hop
        return hops[0] if hops else view.peer
