"""``voicebridge probe WEBHOOK_URL``: do what Twilio does on an incoming call, layer by layer.

One job a module: ``options`` (the command line), ``session`` (the I/O of one run), ``judge``
(what each observation means for its line), ``report`` (text and JSON); the run's verdict is
``voicebridge/tools/diagnosis``'s. It works against any Twilio voice app, not only voicebridge.
"""

from __future__ import annotations

import importlib
import json
import sys

# Loaded when first used, so ``judge`` (pure) imports without the I/O modules and their Twisted.
_WHERE = {
    **dict.fromkeys(
        (
            "ConnectTo",
            "ProbeOptions",
            "UsageError",
            "add_arguments",
            "options_from",
            "parse_connect_to",
            "redacted",
            "sibling_path",
            "twilio_form",
            "without_userinfo",
        ),
        "options",
    ),
    "Report": "report",
    "Probe": "session",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"voicebridge.tools.probe.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConnectTo",
    "Probe",
    "ProbeOptions",
    "Report",
    "UsageError",
    "add_arguments",
    "options_from",
    "parse_connect_to",
    "redacted",
    "run",
    "sibling_path",
    "twilio_form",
    "without_userinfo",
]


def run(args) -> int:
    from twisted.internet import defer, task

    from voicebridge.tools.probe.options import UsageError, options_from
    from voicebridge.tools.probe.session import Probe

    try:
        options = options_from(args)
    except UsageError as e:
        print(f"voicebridge probe: {e}", file=sys.stderr)
        return 2

    async def main(reactor):
        try:
            report = await Probe(reactor, options).run()
        except Exception:
            import traceback

            traceback.print_exc()
            print("voicebridge probe: internal error (above); please report it", file=sys.stderr)
            raise SystemExit(3) from None
        print(json.dumps(report.as_json(), indent=2) if args.json else report.text())
        raise SystemExit(report.exit_status)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    return 3  # react exits; reaching here means the reactor could not run
