"""``record``: every call to a stereo WAV (the caller left, what was sent back right) and a JSON sidecar.

On its own it only listens (the caller hears silence). With ``handler = NAME`` (``--record-handler``)
it records another handler's call: ``echo``, ``relay``, a third-party one. That handler runs as
if alone; the recorder hears what the call sends through ``Call.watch_outbound``. The format,
the alignment of the two channels and the crash safety are described in ``voicebridge.audio.recording``.
"""

from __future__ import annotations

import datetime
import os

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads

from voicebridge.audio.recording import SAMPLES_PER_MS, Recording, safe_name
from voicebridge.handlers.api import Handler, Logger, LogLevel

log = Logger(namespace="voicebridge.record")

OPTIONS = {"dir", "handler"}
SAVE_GRACE = 2.0  # at shutdown, beyond what the recorded handler needs: the WAV's fsync and rename, then the sidecar's


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="milliseconds")


class RecordHandler(Handler):
    @classmethod
    def check_options(cls, options: dict) -> dict:
        unknown = set(options) - OPTIONS
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(OPTIONS))})")
        directory = options.get("dir")
        if not directory:
            raise ValueError("dir: required: the directory recordings are written to (--record-dir DIR)")
        if not isinstance(directory, str):
            raise ValueError(f"dir: expected a path, got {type(directory).__name__}")
        directory = os.path.abspath(os.path.expanduser(directory))
        if not os.path.isdir(directory):
            raise ValueError(f"dir: {directory} does not exist or is not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ValueError(f"dir: {directory} is not writable by this process")
        inner = options.get("handler")
        if inner is not None and (not isinstance(inner, str) or not inner):
            raise ValueError("handler: expected the name of the handler whose calls are recorded")
        return {"dir": directory, "handler": inner or None}

    @classmethod
    def inner_handler(cls, options: dict) -> str | None:
        return options.get("handler")

    @classmethod
    def uses_connect_action(cls, options: dict) -> bool:
        inner = options.get("inner")
        return bool(inner and inner[1].uses_connect_action(inner[2]))

    @classmethod
    def close_grace(cls, options: dict) -> float:
        inner = options.get("inner")
        return SAVE_GRACE + (inner[1].close_grace(inner[2]) if inner else 0.0)

    def __init__(self, call, options: dict):
        super().__init__(call, options)
        inner = options.get("inner")
        self.inner = inner[1](call, inner[2]) if inner else None
        self.inner_name = inner[0] if inner else None
        self.wants_frames = bool(self.inner is not None and self.inner.wants_frames)
        self.recording: Recording | None = None
        self.start = None

    # Twilio's events: recorded, then handed on.

    def on_start(self, start) -> None:
        self.start = start
        self.recording = Recording(self.options["dir"], safe_name(start.call_sid, start.stream_sid))
        self.call.watch_outbound(self)
        log.info(
            "recording callSid={callSid} to {path}",
            event_name="record.started",
            path=self.recording.wav_path,
            part=self.recording.part,
            **self.call.ids,
        )
        if self.inner is not None:
            self.inner.on_start(start)

    def on_media(self, audio: bytes, timestamp: int) -> None:
        if self.recording is not None:
            self.recording.caller(audio, timestamp)
        if self.inner is not None:
            self.inner.on_media(audio, timestamp)

    def on_dtmf(self, digit: str) -> None:
        if self.recording is not None:
            self.recording.dtmf_received(digit)
        if self.inner is not None:
            self.inner.on_dtmf(digit)

    def on_mark(self, name: str) -> None:
        if self.recording is not None:
            self.recording.mark_played(name)
        if self.inner is not None:
            self.inner.on_mark(name)

    # What the call sends (Call.watch_outbound).

    def sent_audio(self, audio: bytes) -> None:
        if self.recording is not None:
            self.recording.sent(audio)  # a no-op once the recording is finishing

    def sent_mark(self, name: str) -> None:
        if self.recording is not None:
            self.recording.mark_sent(name)

    def sent_clear(self) -> None:
        if self.recording is not None:
            self.recording.cleared()

    # The end: the inner handler stops first (it may still send), then the files are completed.

    def on_stop(self, reason: str):
        inner_done = defer.maybeDeferred(self.inner.on_stop, reason) if self.inner is not None else defer.succeed(None)
        inner_done.addErrback(
            lambda f: log.failure(
                "handler {handler} failed to stop callSid={callSid}",
                f,
                event_name="call.handler_error",
                handler=self.inner_name,
                method="on_stop",
                **self.call.ids,
                level=LogLevel.error,
            )
        )
        if self.recording is None:
            return inner_done
        return inner_done.addCallback(lambda _: self._save(reason))

    def _save(self, reason: str):
        recording, call = self.recording, self.call
        clock = call.clock
        sidecar = {
            "callSid": call.call_sid,
            "streamSid": call.stream_sid,
            "accountSid": call.account_sid,
            "tenant": call.tenant.id if call.tenant is not None else None,
            "handler": self.inner_name,
            "parameters": dict(call.parameters),
            "tracks": list(self.start.tracks),
            "mediaFormat": self.start.media_format,
            "startedAt": _iso(call.started_at),
            "stoppedAt": _iso(clock.seconds()),
            "endReason": reason,
        }
        extra = getattr(self.inner, "sidecar", None)  # what the recorded handler keeps (openai-realtime's transcripts)
        if callable(extra):
            sidecar.update({k: v for k, v in extra().items() if k not in sidecar})
        recording.finishing = True  # here, on the reactor's thread: nothing reaches the recording from now on
        if IReactorThreads.providedBy(clock):
            # fsync can take a while on a busy disk: not on the reactor's thread.
            saving = threads.deferToThreadPool(clock, clock.getThreadPool(), recording.finish, sidecar)
        else:
            saving = defer.maybeDeferred(recording.finish, sidecar)
        return saving.addCallbacks(self._saved, self._failed)

    def _saved(self, paths) -> None:
        wav, sidecar = paths
        counts = self.recording.counts
        log.info(
            "recording saved callSid={callSid} {wav} ({duration_ms} ms, {gaps} gap(s) filled)",
            event_name="record.saved",
            wav=wav,
            sidecar=sidecar,
            duration_ms=self.recording.written // SAMPLES_PER_MS,
            gaps=counts["gaps"],
            frames_in=counts["framesIn"],
            frames_out=counts["framesOut"],
            **self.call.ids,
        )

    def _failed(self, failure) -> None:
        self.recording.abandon()
        log.error(
            "recording of callSid={callSid} failed and was not saved: {error}",
            event_name="record.failed",
            error=str(failure.value),
            path=self.recording.wav_path,
            **self.call.ids,
        )
