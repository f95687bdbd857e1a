"""The probe's options: the command line, checked, and what Twilio would post. Pure."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from voicebridge.cli import name_value_pairs
from voicebridge.config.file import ConfigError, Secret, read_auth_token
from voicebridge.net.wsclient import load_trust_root


class UsageError(ValueError):
    pass


# Options.


@dataclass(frozen=True)
class ConnectTo:
    """curl's --connect-to: connections meant for HOST:PORT go to ADDR:PORT; SNI and Host stay."""

    host: str
    port: int | None
    to_host: str
    to_port: int | None

    def target(self, host: str, port: int) -> tuple[str, int] | None:
        if self.host and self.host.lower() != host.lower():
            return None
        if self.port is not None and self.port != port:
            return None
        return (self.to_host or host, self.to_port or port)


_CONNECT_TO = re.compile(r"^(\[[^\]]*\]|[^:\[\]]*):(\d*):(\[[^\]]*\]|[^:\[\]]*):(\d*)$")


def parse_connect_to(spec: str) -> ConnectTo:
    match = _CONNECT_TO.match(spec.strip())
    if not match:
        raise UsageError(f"--connect-to {spec!r} is not HOST:PORT:ADDR:PORT (IPv6 in brackets; empty parts match any)")
    host, port, to_host, to_port = match.groups()
    ports = []
    for text in (port, to_port):
        if text and not 0 < int(text) < 65536:
            raise UsageError(f"--connect-to {spec!r}: {text} is not a TCP port")
        ports.append(int(text) if text else None)
    return ConnectTo(host.strip("[]"), ports[0], to_host.strip("[]"), ports[1])


@dataclass
class ProbeOptions:
    url: str
    auth_token: str | None = field(default=None, repr=False)
    params: list = field(default_factory=list)
    seconds: float = 3.0
    cafile: str | None = None
    connect_to: list = field(default_factory=list)
    local: bool = False
    expect: str = "media"
    timeout: float = 10.0

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{self.url!r} is not an http(s):// webhook URL with a host")
        try:
            _ = parts.port
        except ValueError:
            raise UsageError(f"the port in {self.url!r} is not a number") from None
        if not 0 < self.seconds <= 60:
            raise UsageError("--seconds must be more than 0 and at most 60")
        if not 0 < self.timeout <= 120:
            raise UsageError("--timeout must be more than 0 and at most 120")
        if self.expect not in ("media", "echo", "none"):
            raise UsageError("--expect is media, echo or none")
        if self.cafile:
            try:
                load_trust_root(self.cafile)
            except ValueError as e:
                raise UsageError(f"--cafile: {e}") from None

    def route(self, host: str, port: int) -> tuple[str, int] | None:
        for rule in self.connect_to:
            target = rule.target(host, port)
            if target is not None:
                return target
        return None


def twilio_form(call_sid: str, account_sid: str, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What Twilio posts for an inbound call; ``--param`` adds or replaces fields."""
    form = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": "+15550100200",
        "Caller": "+15550100100",
        "Direction": "inbound",
        "From": "+15550100100",
        "To": "+15550100200",
    }
    for name, value in extra:
        form[name] = value
    return list(form.items())


def sibling_path(path: str, token: str) -> str:
    """A path beside ``path`` that surely does not exist, under the same proxy prefix."""
    name = f"voicebridge-probe-{token}"
    return path + name if path.endswith("/") else f"{path}-{name}"


def without_userinfo(url: str) -> str:
    """The URL Twilio signs and requests: credentials in it are sent as HTTP authentication instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redacted(url: str) -> str:
    """The URL for output: a password in it is shown as ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}"))


def add_arguments(parser) -> None:
    parser.add_argument(
        "url", metavar="WEBHOOK_URL", help="the voice webhook URL configured in Twilio, e.g. https://voice.example.com/voice"
    )
    parser.add_argument(
        "--auth-token",
        help="the Twilio auth token to sign with, as Twilio does (else TWILIO_AUTH_TOKEN; it shows in ps, prefer the variable)",
    )
    parser.add_argument("--auth-token-file", metavar="FILE", help="read the auth token from a file")
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a webhook form field to add or replace (repeatable)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of 20 ms media frames to send (default 3)")
    parser.add_argument("--cafile", metavar="FILE", help="trust the CA certificates in this PEM file instead of the system's")
    parser.add_argument(
        "--connect-to",
        action="append",
        default=[],
        metavar="HOST:PORT:ADDR:PORT",
        help="send connections meant for HOST:PORT to ADDR:PORT; SNI and Host stay (curl's meaning, repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the checklist")
    parser.add_argument(
        "--local",
        action="store_true",
        help="a developer's daemon (http://127.0.0.1:8080/voice): ws://, TLS, ports and private hosts only warn",
    )
    parser.add_argument(
        "--expect",
        choices=("media", "echo", "none"),
        default="media",
        help="what the app sends back: some media (default), an echo of every frame, or nothing required",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a connection or handshake (default 10)")


def options_from(args, environ=os.environ) -> ProbeOptions:
    try:
        if args.auth_token is not None:
            token = Secret(args.auth_token.strip()) or None
        else:
            token = read_auth_token(args.auth_token_file, environ)
        params = name_value_pairs(args.param, "--param")
    except (ConfigError, ValueError) as e:
        raise UsageError(str(e)) from None
    return ProbeOptions(
        url=args.url,
        auth_token=token,
        params=params,
        seconds=args.seconds,
        cafile=args.cafile,
        connect_to=[parse_connect_to(spec) for spec in args.connect_to],
        local=args.local,
        expect=args.expect,
        timeout=args.timeout,
    )
