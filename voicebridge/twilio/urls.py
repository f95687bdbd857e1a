"""What Twilio would refuse in a webhook url or a ``<Stream>`` url: one set of rules for the webhook
(which warns about the stream url it hands out, ``webhook.stream_url``) and the probe. Pure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

# Roles of a url: what Twilio does with it decides what it refuses (and which error a failure shows).
WEBHOOK, STREAM = "webhook", "stream"


@dataclass(frozen=True)
class URLProblem:
    kind: str  # query, scheme, host, port
    fatal: bool
    text: str


_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".localdomain")


def not_public(host: str) -> str | None:
    """Why Twilio, on the internet, could not reach ``host``; None if it may."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            return f"{host} is this machine (loopback)"
        if "." not in host:
            return f"{host} is a single-label name (a container or LAN name) that only your network resolves"
        if host.endswith(_LOCAL_SUFFIXES):
            return f"{host} is a local-network name"
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"{host} is this machine (loopback)"
    if ip.is_private or ip.is_link_local or ip.is_unspecified or ip.is_reserved or ip.is_multicast:
        return f"{host} is a private address"
    return None


def check_url(url: str, role: str, local: bool = False) -> list[URLProblem]:
    """What Twilio would refuse in the webhook url or the <Stream> url; ``local`` relaxes wss, port and host."""
    parts = urlsplit(url)
    problems = []
    if role == STREAM:
        if parts.query or url.endswith("?"):
            problems.append(
                URLProblem("query", True, f"query string ?{parts.query}: Twilio refuses stream urls with one (31920)")
            )
        if not parts.scheme or not parts.hostname:
            problems.append(URLProblem("scheme", True, f"{url!r} is not an absolute wss:// url"))
            return problems
        if parts.scheme == "ws":
            problems.append(URLProblem("scheme", not local, "ws:// is not encrypted; Twilio connects only to wss:// (31922)"))
        elif parts.scheme != "wss":
            problems.append(
                URLProblem("scheme", True, f"{parts.scheme}:// is not wss://; Twilio connects only to wss:// (31922)")
            )
        try:
            port = parts.port
        except ValueError:
            problems.append(URLProblem("port", True, f"the port in {url!r} is not a number"))
            port = None
        if parts.scheme == "wss" and port not in (None, 443):
            problems.append(URLProblem("port", not local, f"port {port}: Twilio connects to Media Streams on 443 only"))
    elif parts.scheme == "http" and not local:
        problems.append(
            URLProblem(
                "scheme", False, "http:// webhook: Twilio accepts it, but the call's data and signature travel unencrypted"
            )
        )
    reason = not_public(parts.hostname or "")
    if reason:
        problems.append(URLProblem("host", not local, f"{reason}; Twilio cannot reach it"))
    return problems
