"""A fleet of machines behind any load balancer, with Redis as the one shared engine (``--redis``).

This module loads no Twisted at import (``slots`` is pure, and is reached through it).

``slots`` (keys and Lua scripts, pure), ``client`` (the Redis connection), ``leases`` (this
machine's reservations, claims and leases), ``control`` (the call-control API). Without
``--redis`` none of it is loaded, and the daemon is the one machine it always was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNAVAILABLE_POLICIES = ("admit", "busy")
DEFAULT_LEASE = 15.0


@dataclass(frozen=True)
class FleetSettings:
    redis: object  # client.RedisURL
    unavailable: str = "admit"
    lease: float = DEFAULT_LEASE
    max_calls: int | None = None
    name: str = "voicebridge"
    ca_file: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        return self.redis.shown


OPTIONS = [
    ["redis", None, None, "Redis URL (redis://, rediss://, unix://) shared by a fleet of voicebridges: fleet-wide limits, "
     "call control. Default: this machine alone."],
    ["redis-password-file", None, None, "File holding the Redis password (else from the --redis URL)."],
    ["redis-ca", None, None, "PEM file of CA certificates trusted for rediss:// (default: the system's)."],
    ["redis-unavailable", None, "admit", "While Redis is unreachable, new calls are 'admit'ted under this machine's own "
     "limits, or answered 'busy'."],
    ["fleet-max-calls", None, None, "Most calls in progress across the fleet (needs --redis). Default: no limit.", int],
    ["fleet-lease", None, None, f"Seconds a machine's calls hold their slots unless renewed; a dead machine's slots are "
     f"free within it (needs --redis). Default: {DEFAULT_LEASE:g}.", float],
    ["fleet-name", None, None, "Names the fleet's keys in Redis, so several fleets can share one (default: voicebridge)."],
    ["control-token-file", None, None, "File holding the bearer token of the call-control API (/calls); off without it."],
]


def from_options(options) -> FleetSettings | None:
    """The fleet's settings, or None without ``--redis``; raises usage.UsageError naming the flag."""
    from twisted.python import usage

    if options["redis-unavailable"] not in UNAVAILABLE_POLICIES:
        raise usage.UsageError(f"--redis-unavailable must be admit or busy, not {options['redis-unavailable']!r}")
    if not options["redis"]:
        for flag in ("redis-password-file", "redis-ca", "fleet-max-calls", "fleet-lease", "fleet-name"):
            if options[flag] is not None:
                raise usage.UsageError(f"--{flag} needs --redis URL (the fleet's Redis)")
        return None
    from voicebridge.fleet.client import parse_redis_url  # txredisapi is loaded with --redis only

    try:
        url = parse_redis_url(options["redis"], options["redis-password-file"])
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    lease = options["fleet-lease"] if options["fleet-lease"] is not None else DEFAULT_LEASE
    if not 3 <= lease <= 3600:
        raise usage.UsageError(f"--fleet-lease must be between 3 and 3600 seconds, got {lease:g}")
    if options["fleet-max-calls"] is not None and options["fleet-max-calls"] < 0:
        raise usage.UsageError("--fleet-max-calls must be at least 0")
    name = options["fleet-name"] or "voicebridge"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(name) > 64:
        raise usage.UsageError("--fleet-name: letters, digits, '-', '_' and '.' only, at most 64")
    if url.tls is False and options["redis-ca"]:
        raise usage.UsageError("--redis-ca is for rediss:// (TLS) only")
    if options["redis-ca"]:
        try:
            with open(options["redis-ca"], "rb"):
                pass
        except OSError as e:
            raise usage.UsageError(f"--redis-ca {options['redis-ca']}: {e.strerror}") from None
    return FleetSettings(url, options["redis-unavailable"], lease, options["fleet-max-calls"], name, options["redis-ca"])


def install(settings, registry, admission, site, service, reactor) -> None:
    """Wire the fleet (``--redis``) and the call-control API (``--control-token-file``) into one daemon process."""
    fleet = None
    if settings.fleet is not None:
        from voicebridge.fleet.leases import Fleet, FleetService

        config = settings.fleet
        fleet = Fleet(
            config.redis,
            settings,
            registry,
            reactor,
            fleet_max_calls=config.max_calls,
            lease=config.lease,
            unavailable=config.unavailable,
            name=config.name,
            ca_file=config.ca_file,
        )
        admission.fleet = fleet
        site.metrics.registry.register(fleet.collector())
        FleetService(fleet).setServiceParent(service)
    if settings.control_token is not None:
        from voicebridge.fleet.control import CallControl, CallsResource

        control = CallControl(registry, fleet, reactor)
        site.resource.putChild(b"calls", CallsResource(control, settings.control_token))
