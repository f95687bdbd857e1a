"""``twist voicebridge`` / ``twistd voicebridge``: the options and the service tree."""

from __future__ import annotations

import os

from twisted.python import usage

from voicebridge import handlers
from voicebridge.calls import resolve_handlers
from voicebridge.config import DEFAULT_HANDLER, Config, ConfigError, Secret, Settings, load_config
from voicebridge.publicurl import PublicURLError, PublicURLs, TrustedProxies, parse_public_url

DEFAULT_PORT = 8080


def default_listen(environ=os.environ) -> str:
    """Platforms (Fly.io, Render, Railway, Heroku) say which port to bind in PORT."""
    port = environ.get("PORT", "").strip()
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise usage.UsageError(f"PORT={port!r} is not a TCP port number")
        return f"tcp:{port}"
    return f"tcp:{DEFAULT_PORT}"


def read_token_file(path: str) -> Secret:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise usage.UsageError(f"--auth-token-file {path}: {e.strerror}") from None
    if not token:
        raise usage.UsageError(f"--auth-token-file {path} is empty")
    return Secret(token)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve Twilio's voice webhook (POST /voice) and Media Streams WebSocket (/twilio-media) on one port. "
        "The Twilio auth token comes from TWILIO_AUTH_TOKEN or --auth-token-file; without one, development "
        "mode serves loopback clients only."
    )

    optParameters = [
        ["public-url", None, None, "Public base URL Twilio uses, e.g. https://voice.example.com (stream url and signatures)."],
        ["config", "c", None, "TOML file with tenants and handler settings."],
        ["handler", None, None, f"Handler for calls whose tenant names none (default: {DEFAULT_HANDLER})."],
        ["auth-token-file", None, None, "File holding the Twilio auth token (else TWILIO_AUTH_TOKEN)."],
        ["max-message-size", None, 64 * 1024, "Largest WebSocket message accepted, in bytes (closes with 1009).", int],
    ]
    optFlags = [
        ["show-numbers", None, "Log phone numbers in full (masked by default)."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []
        self["trusted_proxies"] = []

    def opt_listen(self, endpoint):
        """Endpoint to serve on, repeatable (default tcp:$PORT, else tcp:8080), e.g. tcp:8080:interface=127.0.0.1,
        ssl:443:privateKey=key.pem:certKey=cert.pem, unix:/run/voicebridge.sock"""
        self["listen"].append(endpoint)

    def opt_trusted_proxy(self, spec):
        """Address or CIDR of a proxy whose X-Forwarded-Proto/Host/For are believed, repeatable."""
        self["trusted_proxies"].extend(s for s in spec.split(",") if s.strip())

    def opt_auth_token(self, _value):
        """Refused: the token is never a flag. Use TWILIO_AUTH_TOKEN or --auth-token-file."""
        raise usage.UsageError(
            "the auth token is never a command-line flag (it would show in ps and shell history): "
            "use TWILIO_AUTH_TOKEN or --auth-token-file"
        )

    def postOptions(self):
        if not self["listen"]:
            self["listen"] = [default_listen()]
        if self["public-url"]:
            try:
                parse_public_url(self["public-url"])
            except PublicURLError as e:
                raise usage.UsageError(str(e)) from None
        try:
            TrustedProxies(self["trusted_proxies"])
        except PublicURLError as e:
            raise usage.UsageError(str(e)) from None
        if self["auth-token-file"]:
            self["auth_token"] = read_token_file(self["auth-token-file"])
        else:
            token = os.environ.get("TWILIO_AUTH_TOKEN", "").strip()
            self["auth_token"] = Secret(token) if token else None
        try:
            self["config_obj"] = load_config(self["config"]) if self["config"] else Config()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["max-message-size"] < 1024:
            raise usage.UsageError("--max-message-size must be at least 1024 bytes")
        self["handler_name"] = self["handler"] or self["config_obj"].handler or DEFAULT_HANDLER
        try:
            resolve_handlers(self.settings())
        except (ValueError, handlers.UnknownHandler) as e:
            raise usage.UsageError(str(e)) from None

    def settings(self) -> Settings:
        return Settings(
            listen=list(self["listen"]),
            public_url=self["public-url"],
            trusted_proxies=tuple(self["trusted_proxies"]),
            auth_token=self["auth_token"],
            handler=self["handler_name"],
            config=self["config_obj"],
            max_message_size=self["max-message-size"],
            show_numbers=bool(self["show-numbers"]),
        )


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from voicebridge import leanloop
    from voicebridge.admission import Admission
    from voicebridge.calls import CallRegistry
    from voicebridge.service import VoiceBridgeService
    from voicebridge.web import build_site

    leanloop.install(reactor)  # a tenth of the CPU at load: see voicebridge/leanloop.py
    settings = options.settings()
    urls = PublicURLs(settings.public_url, TrustedProxies(settings.trusted_proxies))
    registry = CallRegistry(settings, reactor)
    admission = Admission(settings)
    site = build_site(settings, registry, admission, urls)
    return VoiceBridgeService(settings, registry, site, admission, urls, reactor)
