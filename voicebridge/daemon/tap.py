"""``twist voicebridge`` / ``twistd voicebridge``: the options, and which service tree they make.

``makeService`` only picks one of three trees; each is built by its own function below:
the daemon on its own (``single_service``), under ``--workers`` the supervisor
(``supervisor_service``), or one of its workers (``worker_service``).
"""

from __future__ import annotations

import dataclasses
import os
import sys

from twisted.python import usage

from voicebridge import fleet, handlers
from voicebridge.call.registry import CallRegistry
from voicebridge.call.resolve import handlers_in_use, resolve_handlers
from voicebridge.config import limits
from voicebridge.config.file import DEFAULT_HANDLER, Config, ConfigError, Settings, load_config, read_auth_token, read_secret_file
from voicebridge.daemon import startup
from voicebridge.daemon.service import AdoptedListenService, VoiceBridgeService
from voicebridge.daemon.signals import ProcessSignals
from voicebridge.fastpath import switch
from voicebridge.observe import output
from voicebridge.tls import listen as tls
from voicebridge.web.admission import Admission
from voicebridge.web.publicurl import PublicURLError, PublicURLs, TrustedProxies, parse_public_url
from voicebridge.web.site import build_site
from voicebridge.workers import sockets
from voicebridge.workers.bookkeeping import worker_count
from voicebridge.workers.peers import SupervisorLink, WorkerSpec, worker_spec
from voicebridge.workers.supervisor import Supervisor

DEFAULT_PORT = 8080


def default_listen(environ=os.environ) -> str:
    """Platforms (Fly.io, Render, Railway, Heroku) say which port to bind in PORT."""
    port = environ.get("PORT", "").strip()
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise usage.UsageError(f"PORT={port!r} is not a TCP port number")
        return f"tcp:{port}"
    return f"tcp:{DEFAULT_PORT}"


# flag -> (handler, option): the same settings as the config file's [handlers.NAME] tables.
HANDLER_FLAGS = {
    "record-dir": ("record", "dir"),
    "record-handler": ("record", "handler"),
    "relay-url": ("relay", "url"),
    "relay-fallback": ("relay", "fallback"),
    "relay-message": ("relay", "message"),
    "relay-connect-timeout": ("relay", "connect_timeout"),
    "relay-handshake-timeout": ("relay", "handshake_timeout"),
    "relay-ca": ("relay", "ca_file"),
    "realtime-url": ("openai-realtime", "url"),
    "realtime-model": ("openai-realtime", "model"),
    "realtime-voice": ("openai-realtime", "voice"),
    "realtime-instructions": ("openai-realtime", "instructions"),
    "realtime-instructions-file": ("openai-realtime", "instructions_file"),
    "realtime-greeting": ("openai-realtime", "greeting"),
    "realtime-turn-detection": ("openai-realtime", "turn_detection"),
    "realtime-barge-in-min-ms": ("openai-realtime", "barge_in_min_ms"),
    "realtime-transcripts": ("openai-realtime", "transcripts"),
    "realtime-key-file": ("openai-realtime", "api_key_file"),
    "realtime-fallback": ("openai-realtime", "fallback"),
    "realtime-message": ("openai-realtime", "message"),
    "realtime-ca": ("openai-realtime", "ca_file"),
}
# Handler flags that are switches: given means true; absent leaves the option to the config.
HANDLER_SWITCHES = {"realtime-transcripts"}


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
        ["workers", None, None, "Processes serving the same ports, N or auto (one per core); default: this process alone."],
        [
            "log-format",
            None,
            "auto",
            "Log lines as text, json (one JSON object a line) or journald (text with syslog priorities); "
            "default auto: journald under systemd, text on a terminal, json elsewhere.",
        ],
        *limits.opt_parameters(),
        *fleet.OPTIONS,
        # Handler settings: each flag is one option of one handler (HANDLER_FLAGS), as in [handlers.NAME].
        ["record-dir", None, None, "record: directory for each call's WAV and JSON files."],
        ["record-handler", None, None, "record: the handler whose calls are recorded, e.g. echo or relay (default: none)."],
        ["relay-url", None, None, "relay: ws(s):// URL of the Media Streams application calls are relayed to."],
        ["relay-fallback", None, None, "relay: when the application fails, 'hangup' or 'say' (--relay-message, then hang up)."],
        ["relay-message", None, None, "relay: what Twilio says before hanging up when the application fails."],
        ["relay-connect-timeout", None, None, "relay: seconds for the TCP connection to the application (default 5).", float],
        ["relay-handshake-timeout", None, None, "relay: seconds for its TLS and WebSocket handshakes (default 5).", float],
        ["relay-ca", None, None, "relay: PEM file of CA certificates trusted for wss:// (default: the system's)."],
        ["realtime-url", None, None, "openai-realtime: the Realtime API's wss:// URL (default: OpenAI's; Azure works too)."],
        ["realtime-model", None, None, "openai-realtime: the model (default gpt-realtime)."],
        ["realtime-voice", None, None, "openai-realtime: the agent's voice (default alloy)."],
        ["realtime-instructions", None, None, "openai-realtime: instructions; {businessId}, {plan}, {to}, {from} are filled in."],
        ["realtime-instructions-file", None, None, "openai-realtime: a UTF-8 file holding the instructions."],
        ["realtime-greeting", None, None, "openai-realtime: what the agent says first (default: it waits for the caller)."],
        ["realtime-turn-detection", None, None, "openai-realtime: server_vad (default) or semantic_vad."],
        ["realtime-barge-in-min-ms", None, None, "openai-realtime: ms of speech that interrupt the agent (default 0).", int],
        ["realtime-key-file", None, None, "openai-realtime: a file holding the API key (else OPENAI_API_KEY)."],
        ["realtime-fallback", None, None, "openai-realtime: when the API fails, 'hangup' or 'say' (--realtime-message)."],
        ["realtime-message", None, None, "openai-realtime: what Twilio says before hanging up when the API fails."],
        ["realtime-ca", None, None, "openai-realtime: PEM CA file trusted for its wss:// (default: the system's)."],
    ]
    optFlags = [
        ["show-numbers", None, "Log phone numbers in full (masked by default)."],
        ["no-fast-path", None, "Serve on plain Twisted and Autobahn, no per-frame fast path (or VOICEBRIDGE_FAST_PATH=off)."],
        ["realtime-transcripts", None, "openai-realtime: both sides' words in the log and the recording's sidecar."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []
        self["trusted_proxies"] = []
        self.argv: list[str] = []

    def parseOptions(self, options=None):
        self.argv = list(sys.argv[1:] if options is None else options)  # what --workers passes to each worker
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:  # in-process (check-config, tests): the caller reports it
                raise
            # Under twist/twistd: one line and a hint, not twist's usage of every plugin (voicebridge/daemon/startup.py).
            flags = [name for name, *_ in self.optParameters + self.optFlags] + ["listen", "trusted-proxy"]
            print(f"voicebridge: {startup.usage_line(e, flags)}", file=sys.stderr)
            print("  (voicebridge run --help, or twist voicebridge --help, lists every option)", file=sys.stderr)
            raise SystemExit(64) from None

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
        self["log-format"] = self["log-format"].lower()
        if self["log-format"] not in output.FORMATS:
            raise usage.UsageError(f"--log-format {self['log-format']!r}: one of {', '.join(output.FORMATS)}")
        output.take_over(self, self["log-format"])
        try:
            self["fast_path"] = switch.requested(self["no-fast-path"], os.environ)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
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
        try:
            self["auth_token"] = read_auth_token(self["auth-token-file"])
            self["config_obj"] = load_config(self["config"]) if self["config"] else Config()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["tls"] = {}
        for description in self["listen"]:
            try:
                startup.check_listen(description)
            except startup.ListenError as e:
                raise usage.UsageError(str(e)) from None
            if tls.is_ssl(description):
                try:  # read and checked by OpenSSL once, here: unusable files stop start-up with the flag named
                    self["tls"][description] = tls.build(description)
                except tls.TLSConfigError as e:
                    raise usage.UsageError(str(e)) from None
        self["worker_count"] = None
        if self["workers"] is not None:
            try:
                self["worker_count"] = worker_count(self["workers"])
                for description in self["listen"]:
                    sockets.parse_listen(description)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        try:
            self["limits"] = limits.from_options(self)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["fleet"] = fleet.from_options(self)
        try:
            self["control_token"] = (
                read_secret_file(self["control-token-file"], "--control-token-file") if self["control-token-file"] else None
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["control_token"] is not None and (self["worker_count"] or 1) > 1 and self["fleet"] is None:
            raise usage.UsageError(
                f"--control-token-file with --workers {self['workers']} needs --redis: call control finds calls "
                "through the fleet's Redis, and without it each worker would see only its own; add --redis "
                "(a redis-server on this machine is enough) or serve from one process"
            )
        self["handler_name"] = self["handler"] or self["config_obj"].handler or DEFAULT_HANDLER
        self["handlers"] = None
        try:  # once, here: the daemon and check-config use what is resolved
            self["handlers"] = resolved = resolve_handlers(self.settings())
        except handlers.UnknownHandler as e:
            where = startup.handler_key(self["config_obj"], self["handler"], self.handler_options(), str(e))
            raise usage.UsageError(f"{where}: {e}" if where else str(e)) from None
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        unused = set(self.handler_options()) - handlers_in_use(resolved)
        if unused:
            flags = ", ".join(
                f"--{flag}" for flag, (name, _) in HANDLER_FLAGS.items() if name in unused and self[flag] not in (None, 0)
            )
            raise usage.UsageError(
                f"{flags}: no call uses the {', '.join(sorted(unused))} handler; add --handler NAME, or name it in the config"
            )

    def handler_options(self) -> dict:
        options: dict = {}
        for flag, (handler, key) in HANDLER_FLAGS.items():
            if flag in HANDLER_SWITCHES:
                if self[flag]:
                    options.setdefault(handler, {})[key] = True
            elif self[flag] is not None:
                options.setdefault(handler, {})[key] = self[flag]
        return options

    def settings(self) -> Settings:
        return Settings(
            listen=list(self["listen"]),
            public_url=self["public-url"],
            trusted_proxies=tuple(self["trusted_proxies"]),
            auth_token=self["auth_token"],
            handler=self["handler_name"],
            handler_options=self.handler_options(),
            config=self["config_obj"],
            show_numbers=bool(self["show-numbers"]),
            limits=self["limits"],
            tls=dict(self["tls"]),
            handlers=self["handlers"],
            fast_path=self["fast_path"].on,
            fast_path_reason=self["fast_path"].reason,
            fleet=self["fleet"],
            control_token=self["control_token"],
        )


def makeService(options, reactor=None):
    """One of three trees: the daemon on its own; under ``--workers``, the supervisor; or one of its workers."""
    if reactor is None:
        from twisted.internet import reactor  # the one twistd installed: imported only once it has
    settings = options.settings()
    spec = worker_spec()
    supervising = spec is None and options["worker_count"]
    # The self-check, and the lean poll step when on (a supervisor only reports what its workers will do).
    fast = switch.engage(options["fast_path"], reactor, install=not supervising)
    settings = dataclasses.replace(settings, fast_path=fast.on, fast_path_reason=fast.reason)
    if supervising:
        return supervisor_service(settings, options.argv, options["worker_count"], reactor)
    if spec is None:
        return single_service(settings, reactor)
    return worker_service(settings, spec, reactor)


def supervisor_service(settings: Settings, argv: list[str], count: int, reactor) -> Supervisor:
    """``--workers``: binds the ports and keeps ``count`` workers; serves nothing itself."""
    supervisor = Supervisor(settings, argv, count, reactor)
    ProcessSignals(reactor, supervisor.cut, supervisor.reload).setServiceParent(supervisor)
    return supervisor


def _serving_parts(settings: Settings, reactor):
    """What a serving process is made of: public URLs, the registry of calls, admission, the Site."""
    urls = PublicURLs(settings.public_url, TrustedProxies(settings.trusted_proxies))
    registry = CallRegistry(settings, reactor)
    admission = Admission(settings, registry)
    site = build_site(settings, registry, admission, urls)
    return urls, registry, admission, site


def single_service(settings: Settings, reactor) -> VoiceBridgeService:
    """The daemon on its own: it binds its ports and takes its signals."""
    urls, registry, admission, site = _serving_parts(settings, reactor)
    service = VoiceBridgeService(settings, registry, site, admission, urls, reactor)
    ProcessSignals(reactor, service.drain.cut, service.reload).setServiceParent(service)
    fleet.install(settings, registry, admission, site, service, reactor)
    return service


def worker_service(settings: Settings, spec: WorkerSpec, reactor) -> VoiceBridgeService:
    """One worker under a supervisor: it serves on the sockets it was handed, and hears its signals through the link."""
    urls, registry, admission, site = _serving_parts(settings, reactor)
    signals = ProcessSignals(reactor, lambda: service.drain.cut(), lambda: service.reload(), supervised=True)
    link = SupervisorLink(
        spec,
        registry,
        site.metrics,
        reactor,
        on_drain=lambda: signals.stop_requested("a drain from the supervisor"),
        on_cut=signals.on_cut,
        on_reload=signals.on_reload,
    )
    listeners = [AdoptedListenService(d, fd, site, reactor, settings.tls.get(d)) for d, fd in spec.listen]
    service = VoiceBridgeService(settings, registry, site, admission, urls, reactor, listeners=listeners, link=link)
    signals.setServiceParent(service)
    fleet.install(settings, registry, admission, site, service, reactor)
    return service
