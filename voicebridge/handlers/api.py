"""The handler API: everything a handler may use, in one module (docs/handlers.md describes it).

A handler subclasses ``Handler`` and talks to its call through ``self.call``, a ``HandlerCall``:
send audio, marks and clears, hang up (or have Twilio say something first), the clock, whether
the call is live, its parameters, tenant and SIDs. It reaches nothing else of the daemon: the
registry, the connect-action store and the auth token stay behind this surface, so they can
change without touching a handler. Besides that, a handler imports only the pure
``voicebridge.twilio`` and ``voicebridge.audio`` and what this module re-exports: a logger and
its helpers, and the client side of a WebSocket for handlers that connect out (relay).
"""

from __future__ import annotations

import warnings

from twisted.logger import Logger, LogLevel

from voicebridge import __version__
from voicebridge.config.file import Secret, read_secret_file
from voicebridge.net.leanclient import LeanClientFrames
from voicebridge.net.wsclient import endpoint_for, load_trust_root
from voicebridge.observe.logs import mask_text, printable, redact_url
from voicebridge.twilio.signatures import SignatureChecker

__all__ = [
    "USER_AGENT",
    "Handler",
    "HandlerCall",
    "LeanClientFrames",
    "Logger",
    "LogLevel",
    "Secret",
    "endpoint_for",
    "load_trust_root",
    "printable",
    "read_secret_file",
    "redact_url",
]

USER_AGENT = f"voicebridge/{__version__}"  # for a handler's own outbound connections


class Handler:
    """Base class: override the events you need; each gets the call's context through ``self.call``."""

    # True for a handler that forwards Twilio's frames byte for byte (relay): during each event the
    # frame being handled is ``self.call.frame``, and ``self.call.opening_frames`` holds ``connected``
    # and ``start`` as received. Other handlers leave it False, and their calls pay nothing for it.
    wants_frames = False

    def __init__(self, call: HandlerCall, options: dict):
        self.call = call
        self.options = options

    @classmethod
    def check_options(cls, options: dict) -> dict:
        """Validate (and normalize) options at start-up; raise ValueError with a precise message."""
        return options

    @classmethod
    def inner_handler(cls, options: dict) -> str | None:
        """The handler this one hands the call on to, if it wraps one (record records another handler's call).

        Its options are resolved like any handler's, for the same tenant, and given to this one as
        ``options["inner"] = (name, class, options)``.
        """
        return None

    @classmethod
    def uses_connect_action(cls, options: dict) -> bool:
        """True if this handler may decide what Twilio does after the stream ends (relay's spoken fallback).

        The webhook then answers ``<Connect action=".../connect-action">`` for its calls, and
        ``self.call.say_and_hang_up`` works.
        """
        return False

    @classmethod
    def close_grace(cls, options: dict) -> float:
        """Seconds ``on_stop`` may take once the call's socket has closed (a connection's close, a file's save).

        At shutdown the drain waits the close handshake plus the longest grace of the handlers in
        use (at least ``voicebridge.daemon.drain.HANDLER_GRACE``), then gives up on the call.
        """
        return 0.0

    def on_start(self, start) -> None:
        """Twilio's ``start`` arrived; ``self.call.parameters`` holds the call's context."""

    def on_media(self, audio: bytes, timestamp: int) -> None:
        """20 ms of the caller's mu-law audio; ``timestamp`` is milliseconds since the stream began."""

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_mark(self, name: str) -> None:
        """Audio sent before ``send_mark(name)`` has played (or was cleared)."""

    def on_stop(self, reason: str):
        """The stream ended: ``reason`` is the call's end reason, as ``call.ended`` logs it: ``stop`` (Twilio's),
        ``closed``, ``hangup``, ``error``, ``shutdown`` (a drain closed it), a bound (``idle-timeout``,
        ``max-duration``, ``slow-reader``, ``message-too-big``, ...) or a handler's own (``relay-failed``).

        May return a Deferred; the call is not forgotten until it fires.
        """


class HandlerCall:
    """A call as its handler sees it (``self.call``): the whole of what a handler may do with it.

    The sending methods are the call's own bound methods, set on this object: a frame echoed costs
    no extra call (instructions per echoed frame are those of calling the ``Call`` directly).
    """

    def __init__(self, call, clock, connect_actions, auth_token: str | None):
        self._call = call
        self._connect_actions = connect_actions
        self._auth_token = auth_token
        self.clock = clock  # the reactor (a task.Clock in unit tests): callLater, seconds(), connecting out
        self._bind()

    def _bind(self) -> None:
        call = self._call
        self.send_audio = call.send_audio  # (audio: bytes): mu-law to the caller, any length; Twilio queues it
        self.send_mark = call.send_mark  # (name): on_mark(name) once what was sent before has played
        self.clear = call.clear  # (): drop the audio Twilio still has queued (barge-in)
        self.forward = call.forward  # (message, raw): an application's frame byte for byte (relay)

    def __repr__(self):
        return f"<HandlerCall {self._call!r}>"

    # The call's context.

    @property
    def parameters(self) -> dict[str, str]:
        return self._call.parameters

    @property
    def tenant(self):
        return self._call.tenant

    @property
    def call_sid(self) -> str | None:
        return self._call.call_sid

    @property
    def stream_sid(self) -> str | None:
        return self._call.stream_sid

    @property
    def account_sid(self) -> str | None:
        return self._call.account_sid

    @property
    def started_at(self) -> float | None:
        """When Twilio's start was accepted, in ``clock.seconds()``."""
        return self._call.started_at

    @property
    def ids(self) -> dict:
        """``{"callSid": ..., "conn": ...}``: put ``**self.call.ids`` on every log event about the call."""
        return self._call.ids

    @property
    def live(self) -> bool:
        """True from start until the call ends: what is sent now reaches Twilio; after, sending does nothing."""
        return self._call.live

    def loggable(self, text: str, limit: int = 200) -> str:
        """What a caller or a peer said, fit for the log: control characters escaped, cut at ``limit``,
        and number-like runs masked unless the daemon runs with ``--show-numbers`` (a caller reading
        out a phone or card number must not reach the log whole)."""
        return mask_text(printable(text, limit), self._call.registry.show_numbers)

    # Raw frames, for a handler with ``wants_frames``.

    @property
    def frame(self) -> bytes | None:
        return self._call.frame

    @property
    def opening_frames(self) -> list[bytes]:
        return self._call.opening_frames

    # Acting on the call.

    def hangup(self, reason: str = "hangup") -> None:
        """Close the stream: Twilio leaves <Connect> and, with nothing after it, hangs up."""
        self._call.hangup(reason)

    def say_and_hang_up(self, message: str, why: str, reason: str = "hangup") -> None:
        """Have Twilio say ``message`` and hang up once the stream has ended, then end it (``reason``).

        Needs ``uses_connect_action`` to be True for this handler's options; ``why`` is logged when
        Twilio fetches the TwiML (relay passes its failure, e.g. ``connect-refused``).
        """
        self._connect_actions.say_and_hang_up(self._call.call_sid, message, why)
        self._call.hangup(reason)

    def dial_and_end(self, destination: str, why: str, reason: str = "transfer") -> None:
        """Have Twilio connect the caller to ``destination`` (an E.164 number or a ``sip:`` URI) once the
        stream has ended, then end it (``reason``): an AI agent's transfer. Needs ``uses_connect_action``."""
        self._connect_actions.dial(self._call.call_sid, destination, why)
        self._call.hangup(reason)

    def protocol_error(self, reason: str, detail: str) -> None:
        """Count (and log once per reason) something wrong a peer of this call sent, without ending it."""
        self._call.protocol_error(reason, detail)

    def watch_outbound(self, watcher) -> None:
        """Hear what the call sends: ``watcher.sent_audio(audio)``, ``sent_mark(name)``, ``sent_clear()`` (record)."""
        self._call.watch_outbound(watcher)
        self._bind()

    def twilio_signature(self, url: str) -> str | None:
        """The ``X-Twilio-Signature`` Twilio would send to ``url``; None without an auth token (development mode).

        A relay puts it on its handshake, so an application that checks Twilio's signatures keeps working.
        """
        return SignatureChecker(self._auth_token).sign(url) if self._auth_token else None

    def __getattr__(self, name: str):
        """Only for names this surface lacks: handlers written before the API reached into the daemon's
        ``Call`` (``call.registry.clock`` was documented). They keep working, warned; nothing built in does it."""
        call = self.__dict__.get("_call")
        if name.startswith("__") or call is None or not hasattr(call, name):
            raise AttributeError(f"the handler API has no {name!r} (see voicebridge.handlers.api)")
        warnings.warn(
            f"call.{name} is not part of the handler API and will go: use what voicebridge.handlers.api gives "
            "(call.clock for call.registry.clock, call.say_and_hang_up for call.registry.connect_actions)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(call, name)
