"""``--log-format``: which of voicebridge/observe/formats.py's formats the log is written in, and
taking over twist's (and twistd's) log observer to write it.

twist parses its own options, then the plugin's, and builds its log observer only after
``makeService``, from ``fileLogObserverFactory`` in its options. The plugin's options are a
child of twist's (``Options.parent``), so ``postOptions`` sets that factory, and twist's level
filter, log file and start-up messages stay as they are. twistd builds its observer from
``--logger``, the same way. Lines from Twisted and libraries (``Starting reactor...``) go
through the same observer, so they come out in the same format.

A worker under ``--workers`` writes twist's JSON (``worker_observer``), whatever its options say:
it is how its events reach the supervisor (voicebridge/workers/supervisor.py ``relay_log``),
which writes them in its own format with ``worker`` and ``worker_pid`` added.
"""

from __future__ import annotations

import os
import sys

from twisted.logger import ILogObserver, formatEvent, jsonFileLogObserver
from zope.interface import implementer

from voicebridge.observe.formats import json_line, text_line

FORMATS = ("auto", "text", "json", "journald")
WORKER_ENVIRONMENT = "VOICEBRIDGE_WORKER"  # voicebridge.workers.peers.ENVIRONMENT (not imported: it pulls the reactor)


def journal_stream(stream, environ=os.environ) -> bool:
    """Is ``stream`` the journald stream systemd gave the service? ``JOURNAL_STREAM`` names it as
    ``device:inode``; it is inherited by children whose output goes elsewhere, hence the check."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def choose(requested: str, stream, environ=os.environ) -> str:
    """``auto``: journald when the stream is the journal's, text on a terminal, JSON lines elsewhere."""
    if requested != "auto":
        return requested
    if journal_stream(stream, environ):
        return "journald"
    try:
        if stream.isatty():
            return "text"
    except (AttributeError, ValueError):
        pass
    return "json"


@implementer(ILogObserver)
class LineObserver:
    """Writes each event as its line(s) and flushes: a crash loses no line it logged."""

    def __init__(self, stream, fmt: str):
        self.stream = stream
        self.format = fmt
        if fmt == "json":
            self._line = json_line
        else:
            journald = fmt == "journald"
            self._line = lambda event: text_line(event, journald=journald)

    def __call__(self, event: dict) -> None:
        line = self._line(event)
        try:
            self.stream.write(line)
        except UnicodeEncodeError:  # a stream that is not UTF-8 (LANG=C on an old Python)
            self.stream.write(line.encode("ascii", "backslashreplace").decode("ascii"))
        self.stream.flush()


def worker_observer(stream):
    """A worker's log, for the supervisor: twist's JSON, which restores the event as it was (level,
    fields, format), plus ``log_traceback``: twist's JSON keeps a failure's frames but not its message,
    and ``log_rendered``, the message as the worker formatted it: the JSON keeps each field as
    ``str(value)``, so ``{duration:.1f}`` would come back as ``0.002404451370239258``."""
    write = jsonFileLogObserver(stream)

    @implementer(ILogObserver)
    def observe(event: dict) -> None:
        failure = event.get("log_failure") or event.get("failure")
        if failure is not None and "log_traceback" not in event:
            try:
                event = {**event, "log_traceback": failure.getTraceback()}
            except Exception:
                pass
        if "log_format" in event and "log_rendered" not in event:
            event = {**event, "log_rendered": formatEvent(event)}
        write(event)

    return observe


def observer_factory(requested: str, environ=os.environ):
    """What twist's ``fileLogObserverFactory`` is: the log file in, an observer out."""

    def factory(stream):
        return LineObserver(stream, choose(requested, stream, environ))

    return factory


class TwistdLogger:
    """twistd's ``--logger`` is a dotted name of a factory with no arguments: one per format."""


for _format in FORMATS:
    setattr(TwistdLogger, _format, staticmethod(lambda fmt=_format: observer_factory(fmt)(sys.stdout)))


def twist_log_format(argv: list[str]) -> str | None:
    """twist's own ``--log-format`` (before the plugin's name), which picks ours when ours is not given."""
    found = None
    for i, arg in enumerate(argv[1:], 1):
        if arg == "voicebridge":
            return found
        if arg.startswith("--log-format="):
            found = arg.split("=", 1)[1].lower()
        elif arg == "--log-format" and i + 1 < len(argv):
            found = argv[i + 1].lower()
    return None  # no plugin name: `voicebridge run`, whose options are all ours


def take_over(options, requested: str, argv=None, environ=os.environ) -> str | None:
    """Make the parent command (twist, twistd) log in ``requested``; returns what was set up, or None.
    ``auto`` (the default) takes twist's own ``--log-format`` when it was given."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    if environ.get(WORKER_ENVIRONMENT):
        if "fileLogObserverFactory" in parent:  # the supervisor starts its workers with twist
            parent["fileLogObserverFactory"] = worker_observer
        return "worker"
    if requested == "auto":
        twists = twist_log_format(sys.argv if argv is None else argv)
        requested = twists if twists in FORMATS else "auto"
    if "fileLogObserverFactory" in parent:  # twist (and `voicebridge run`)
        parent["fileLogObserverFactory"] = observer_factory(requested, environ)
        return requested
    if "nodaemon" in parent:  # twistd: only when it logs to stdout, and no --logger or --syslog was given
        if parent.get("logger") or parent.get("syslog") or not parent.get("nodaemon"):
            return None
        if parent.get("logfile") not in (None, "", "-"):
            return None
        parent["logger"] = f"{__name__}.TwistdLogger.{requested}"  # twistd imports it by name
        return requested
    return None
