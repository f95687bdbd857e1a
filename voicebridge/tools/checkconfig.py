"""``voicebridge check-config FILE [DAEMON OPTIONS]``: is this config valid, and where does each number go?

It checks exactly what the daemon checks at start-up (the same options parser, the same handler
resolution), so a config that passes here starts there. Then it prints, per number, the tenant,
plan, handler and its options; secrets never (option names that look secret are masked, URLs lose
credentials and query strings).
"""

from __future__ import annotations

import argparse
import re
import sys

from twisted.python import usage

from voicebridge.config.file import NoTenant
from voicebridge.observe.logs import redact_url

REFUSED = object()
_SECRET = re.compile(r"secret|token|password|passwd|key|credential|auth", re.IGNORECASE)


def add_arguments(parser) -> None:
    parser.add_argument("file", help="the TOML config (as given to --config)")
    parser.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        metavar="DAEMON OPTIONS",
        help="the daemon options that also shape routing, e.g. --handler relay --relay-url wss://...",
    )


def run(args) -> int:
    from voicebridge.daemon.tap import Options

    options = Options()
    try:  # the daemon's own parsing, which resolves every handler (call.resolve.resolve_handlers) as start-up does
        options.parseOptions(["--config", args.file, *args.options])
    except (usage.UsageError, ValueError, LookupError) as e:
        print(f"voicebridge check-config: {e}", file=sys.stderr)
        return 1
    settings = options.settings()
    print(report(settings, settings.handlers))
    return 0


def report(settings, resolved: dict) -> str:
    config = settings.config
    numbers = sum(len(t.numbers) for t in config.tenants.values())
    try:
        other = config.tenant_for(None, None)  # the daemon's own rule for a call that names no tenant
    except NoTenant:
        other = REFUSED
    unknown = "refused (<Reject/>)" if other is REFUSED else ("the [default] section" if other is not None else "no tenant")
    lines = [
        f"{config.source}: valid. {len(config.tenants)} tenant(s), {numbers} number(s); unknown callers: {unknown}.",
        "",
    ]
    rows = [("NUMBER", "TENANT", "PLAN", "MAX CALLS", "HANDLER", "OPTIONS")]
    for tenant in config.tenants.values():
        for number in tenant.numbers or ("(businessId only)",):
            rows.append(_row(number, tenant, resolved[tenant.id]))
    if other is REFUSED:
        rows.append(("(other)", "-", "-", "-", "refused", "the webhook answers <Reject/>; a stream is closed (1008)"))
    else:
        rows.append(_row("(other)", other, resolved[other.id if other is not None else None]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return "\n".join(line.rstrip() for line in lines)


def _row(number: str, tenant, resolved: tuple) -> tuple:
    chain, options = describe_handler(resolved)
    max_calls = tenant.max_calls if tenant is not None and tenant.max_calls is not None else None
    return (
        number,
        tenant.id if tenant is not None else "-",
        (tenant.plan if tenant is not None else None) or "-",
        "-" if max_calls is None else str(max_calls),
        chain,
        options or "-",
    )


def describe_handler(resolved: tuple) -> tuple[str, str]:
    """``("record > relay", "dir=/rec relay.url=wss://app/media ...")`` for a resolved handler."""
    names, parts, prefix = [], [], ""
    while resolved:
        name, _cls, options = resolved
        names.append(name)
        parts += [f"{prefix}{key}={value}" for key, value in shown_options(options).items()]
        resolved = options.get("inner")
        prefix = f"{resolved[0]}." if resolved else ""
    return " > ".join(names), " ".join(parts)


def shown_options(options: dict) -> dict:
    """The options fit to print: plain values only, secrets masked, URLs redacted."""
    shown = {}
    for key, value in options.items():
        if key == "inner" or not isinstance(value, str | int | float | bool):
            continue
        if _SECRET.search(key):
            value = "***"
        elif isinstance(value, str) and "://" in value:
            value = redact_url(value)
        elif isinstance(value, str) and (" " in value or not value):
            value = repr(value)
        shown[key] = value
    return shown
