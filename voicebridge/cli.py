"""The ``voicebridge`` command: the daemon, and the tools around it.

Each subcommand is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``; adding
one is a module and a line in ``SUBCOMMANDS``. A module loads only when its command runs.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from voicebridge import __version__

SUBCOMMANDS = {
    "sign": ("voicebridge.tools.sign", "print the X-Twilio-Signature Twilio would send for a URL and form"),
    "probe": ("voicebridge.tools.probe", "play Twilio against a deployment and name the layer that fails"),
    "check-config": ("voicebridge.tools.checkconfig", "validate a config file and print where each number's calls go"),
    "loadtest": ("voicebridge.tools.loadtest", "simulate N Twilio calls against a stream URL and measure echo round trips"),
    "calls": ("voicebridge.tools.calls", "list the fleet's live calls, or hang up, clear, mark or play to one (call control)"),
}


def name_value_pairs(items, flag: str = "") -> list[tuple[str, str]]:
    """``["To=+1555", "x=a=b"]`` -> ``[("To", "+1555"), ("x", "a=b")]``; ValueError names the item (and the flag)."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag + ' ' if flag else ''}{item!r} is not NAME=VALUE")
        pairs.append((name, value))
    return pairs


def run_daemon(args: list[str]) -> int:
    """``voicebridge run ARGS`` is ``twist voicebridge ARGS``."""
    from twisted.application.twist._twist import Twist

    Twist.main(["twist", "voicebridge", *args])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebridge", description="The daemon between Twilio and a voice application.")
    parser.add_argument("--version", action="version", version=f"voicebridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the daemon (the same as `twist voicebridge ...`)", add_help=False)
    for name, (_module, summary) in SUBCOMMANDS.items():
        sub.add_parser(name, help=summary)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        return run_daemon(argv[1:])
    if not argv or argv[0] not in SUBCOMMANDS:
        build_parser().parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module_name, summary = SUBCOMMANDS[name]
    module = import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"voicebridge {name}", description=summary)
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv[1:]))
