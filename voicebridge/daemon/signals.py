"""What the process does on signals, replacing the reactor's own handlers once it runs.

- SIGTERM or SIGINT: stop the reactor, which stops the service tree, which drains; the process
  then exits 0. (The reactor's own handlers would make twist re-raise the signal at exit, so the
  exit status would say "killed" after a clean drain.)
- A second SIGTERM or SIGINT: cut the drain short and exit now. (With the reactor's handlers it
  would only log "Can't stop reactor that isn't running".)
- SIGHUP: reload the TLS certificates, without a restart.

Handlers only schedule work with ``callFromThread``; everything runs in the reactor.

A worker under ``--workers`` ignores all three: the supervisor takes the signals (from a
terminal's Ctrl-C, which reaches the whole process group, or systemd, which may signal every
process of the unit) and passes each on once, as a command (voicebridge/workers/peers.py).
"""

from __future__ import annotations

import signal
import threading

from twisted.application.service import Service
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

log = Logger(namespace="voicebridge.service")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ProcessSignals(Service):
    name = "signals"

    def __init__(self, reactor, on_cut, on_reload, supervised: bool = False):
        """``supervised``: a worker's, which ignores the signals (its supervisor passes them on)."""
        self.reactor = reactor
        self.on_cut = on_cut
        self.on_reload = on_reload
        self.supervised = supervised
        self.stop_requests = 0
        self.installed = False
        # The reactor installs its own SIGTERM/SIGINT handlers as it starts, before the services
        # start and ours replace them; they call these methods, captured when the reactor starts
        # (after makeService). Route them here too, so a signal in that window drains and exits 0
        # like any other rather than making twist exit "killed by signal".
        reactor.sigTerm = reactor.sigInt = self._ignored if supervised else self._stop_signal

    def startService(self):
        super().startService()
        # twist and twistd start the services before the reactor runs, and the reactor installs its
        # own handlers as it starts: ours go in now (a signal in between is queued for the
        # reactor, not fatal) and again once it runs.
        self._install()
        self.reactor.callWhenRunning(self._install)

    def _install(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (an embedded use)
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN if self.supervised else self._stop_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN if self.supervised else self._hup_signal)
        self.installed = True
        # The handlers stay until the process exits: a second signal must work during the drain.

    def _ignored(self, signum, frame):
        pass

    def _stop_signal(self, signum, frame):
        self.reactor.callFromThread(self.stop_requested, signal.Signals(signum).name)

    def _hup_signal(self, signum, frame):
        self.reactor.callFromThread(self.on_reload)

    def stop_requested(self, name: str) -> None:
        self.stop_requests += 1
        if self.stop_requests == 1:
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass  # already on its way down: this signal is a second one
            else:
                log.info("received {signal}: draining, then exiting", event_name="service.stop_requested", signal=name)
                return
        log.warn("received {signal} again: exiting now", event_name="service.stop_requested", signal=name)
        self.on_cut()
