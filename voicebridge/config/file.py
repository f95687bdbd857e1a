"""The daemon's configuration: the TOML file (tenants, handler settings) and the settings flags make.

Loading is strict: an unknown key or a wrong type is named with its path, because a typo in a
tenant section would otherwise route real calls somewhere unexpected.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field

from voicebridge.config.limits import Limits
from voicebridge.observe.logs import mask_number, printable

DEFAULT_HANDLER = "echo"
UNKNOWN_TENANT_POLICIES = ("default", "refuse")
_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    pass


class NoTenant(LookupError):
    """The call names no known tenant, and the config refuses unknown tenants."""

    def __init__(self, business_id: str | None, number: str | None):
        super().__init__("the call matches no tenant, and unknown tenants are refused")
        self.business_id = business_id
        self.number = number

    def describe(self, show_numbers: bool = False) -> str:
        """For the log: what the call named (its number masked), and why it is refused."""
        return (
            f"businessId {printable(self.business_id, 64)} and number {mask_number(self.number, show_numbers) or '-'} "
            'match no tenant, and unknown tenants are refused (unknown_tenant = "refuse")'
        )


def normalize_number(number: str) -> str:
    """E.164 as Twilio sends it: keep '+' and digits, drop spaces, dashes, dots and brackets."""
    cleaned = re.sub(r"[\s().-]", "", number or "")
    return cleaned


@dataclass(frozen=True)
class Tenant:
    """A business behind one or more numbers: which handler its calls reach, and its limits."""

    id: str
    numbers: tuple[str, ...] = ()
    plan: str | None = None
    handler: str | None = None
    handler_options: dict = field(default_factory=dict)
    max_calls: int | None = None

    @property
    def is_default(self) -> bool:
        return self.id == "default"


@dataclass(frozen=True)
class Config:
    handler: str | None = None
    handlers: dict = field(default_factory=dict)
    tenants: dict = field(default_factory=dict)
    default_tenant: Tenant | None = None
    unknown_tenant: str = "default"
    source: str | None = None

    def tenant_for(self, business_id: str | None = None, number: str | None = None) -> Tenant | None:
        """The tenant a call belongs to: by business id first, then by the number called.

        The one place that decides what a call naming no tenant gets: under ``unknown_tenant =
        "refuse"`` it raises NoTenant; else it gets the [default] section, or None without one.
        The webhook, the stream's start and check-config all ask here.
        """
        if business_id and business_id in self.tenants:
            return self.tenants[business_id]
        if number:
            wanted = normalize_number(number)
            for tenant in self.tenants.values():
                if wanted in tenant.numbers:
                    return tenant
        if self.unknown_tenant == "refuse":
            raise NoTenant(business_id, number)
        return self.default_tenant


_TENANT_KEYS = {"numbers", "plan", "handler", "handler_options", "max_calls"}
_TOP_KEYS = {"handler", "handlers", "tenants", "default", "unknown_tenant"}


def _expect(value, kind, path):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{path}: expected {names}, got {type(value).__name__}")
    return value


def _tenant(tenant_id: str, table: dict, path: str) -> Tenant:
    _expect(table, dict, path)
    unknown = set(table) - _TENANT_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_TENANT_KEYS))})")
    numbers = _expect(table.get("numbers", []), list, f"{path}.numbers")
    normalized = []
    for i, number in enumerate(numbers):
        _expect(number, str, f"{path}.numbers[{i}]")
        n = normalize_number(number)
        if not re.fullmatch(r"\+[1-9][0-9]{7,14}", n):  # Twilio's To: '+', a non-zero digit, 8 to 15 digits in all
            raise ConfigError(
                f"{path}.numbers[{i}]: {number!r} is not a phone number in E.164 ('+', then 8 to 15 digits not "
                "starting with 0, e.g. +15550100001): Twilio sends To in that form, so calls would never match it"
            )
        normalized.append(n)
    max_calls = table.get("max_calls")
    if max_calls is not None and (_expect(max_calls, int, f"{path}.max_calls") < 0):
        raise ConfigError(f"{path}.max_calls: must be 0 or more")
    plan = table.get("plan")
    if plan is not None:
        _expect(plan, str, f"{path}.plan")
    handler = table.get("handler")
    if handler is not None:
        _expect(handler, str, f"{path}.handler")
    return Tenant(
        id=tenant_id,
        numbers=tuple(normalized),
        plan=plan,
        handler=handler,
        handler_options=dict(_expect(table.get("handler_options", {}), dict, f"{path}.handler_options")),
        max_calls=max_calls,
    )


def parse_config(data: dict, source: str | None = None) -> Config:
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_TOP_KEYS))})")
    handler = data.get("handler")
    if handler is not None:
        _expect(handler, str, "handler")
    handlers = _expect(data.get("handlers", {}), dict, "handlers")
    for name, options in handlers.items():
        _expect(options, dict, f"handlers.{name}")
    tenants = {}
    owners = {}
    for tenant_id, table in _expect(data.get("tenants", {}), dict, "tenants").items():
        if tenant_id == "default":
            raise ConfigError("tenants.default: 'default' names the fallback section; write it as [default]")
        if not _TENANT_ID.match(tenant_id):
            raise ConfigError(f"tenants.{tenant_id}: a tenant id is letters, digits, '_', '.', '-' (1-64)")
        tenant = _tenant(tenant_id, table, f"tenants.{tenant_id}")
        for number in tenant.numbers:
            if number in owners:
                raise ConfigError(f"tenants.{tenant_id}: number {number} already belongs to tenant {owners[number]}")
            owners[number] = tenant_id
        tenants[tenant_id] = tenant
    default = None
    if "default" in data:
        default = _tenant("default", data["default"], "default")
        if default.numbers:
            raise ConfigError("default: the default section owns no numbers")
    policy = data.get("unknown_tenant", "default")
    if policy not in UNKNOWN_TENANT_POLICIES:
        raise ConfigError(f"unknown_tenant: {policy!r} is not one of {', '.join(UNKNOWN_TENANT_POLICIES)}")
    if policy == "refuse" and default is not None:
        raise ConfigError(
            'unknown_tenant = "refuse" refuses every call that names no tenant, so the [default] section would '
            'never apply: remove one of them (unknown_tenant = "default" sends those calls to [default])'
        )
    if policy == "refuse" and not tenants:
        raise ConfigError('unknown_tenant = "refuse" with no [tenants.ID] would refuse every call: add the tenants')
    return Config(
        handler=handler,
        handlers={k: dict(v) for k, v in handlers.items()},
        tenants=tenants,
        default_tenant=default,
        unknown_tenant=policy,
        source=source,
    )


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    try:
        return parse_config(data, source=path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


class Secret(str):
    """A string that never shows itself in a repr or a log."""

    def __repr__(self):
        return "Secret('***')"


TOKEN_VARIABLE = "TWILIO_AUTH_TOKEN"


def read_secret_file(path: str, flag: str) -> Secret:
    """A secret kept in a file (a token, a password, an API key), stripped. A file that cannot be read,
    is not text or is empty is a ConfigError naming ``flag`` and the path, never a silent empty secret."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {path} is not a text file") from None
    if not text:
        raise ConfigError(f"{flag} {path} is empty")
    return Secret(text)


def read_auth_token(token_file: str | None = None, environ=os.environ) -> Secret | None:
    """The Twilio auth token: from ``token_file`` (``--auth-token-file``) when given, else ``TWILIO_AUTH_TOKEN``.

    None when neither gives one. A file that cannot be read, or is empty, is an error naming the
    flag (ConfigError), never a silent "no token": the daemon, ``probe`` and ``sign`` all read it here.
    """
    if token_file:
        return read_secret_file(token_file, "--auth-token-file")
    token = environ.get(TOKEN_VARIABLE, "").strip()
    return Secret(token) if token else None


@dataclass
class Settings:
    """Everything the running daemon needs, resolved from flags, environment and config file."""

    listen: list
    public_url: str | None = None
    trusted_proxies: tuple = ()
    auth_token: Secret | None = field(default=None, repr=False)
    handler: str = DEFAULT_HANDLER
    handler_options: dict = field(default_factory=dict)
    config: Config = field(default_factory=Config)
    show_numbers: bool = False
    limits: Limits = field(default_factory=Limits)
    # --listen ssl:... description -> its tls.ReloadableTLS, built and checked once at start-up.
    tls: dict = field(default_factory=dict, repr=False)
    # call.resolve.resolve_handlers(this), resolved once at start-up; None: resolve when needed.
    handlers: dict | None = field(default=None, repr=False)
    # Whether streams take the fast path (voicebridge/fastpath/switch.py), and why: the banner says.
    fast_path: bool = True
    fast_path_reason: str = "on"
    # --redis: voicebridge.fleet.FleetSettings; None: this machine alone.
    fleet: object = None
    # --control-token-file: the call-control API's bearer token; None: no API.
    control_token: Secret | None = field(default=None, repr=False)
