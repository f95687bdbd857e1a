"""Test doubles for the transport side of a Call (the WebSocket itself is tested for real elsewhere)."""

from contextlib import contextmanager

from twisted.internet import task
from twisted.logger import globalLogPublisher

from voicebridge.call.registry import CallRegistry
from voicebridge.config.file import Config, Settings
from voicebridge.twilio import messages


class FakeLink:
    """Records what a Call sends; ``close`` ends the call as a real socket would."""

    def __init__(self):
        self.sent = []
        self.closed = None
        self.call = None

    def send_text(self, data: bytes):
        self.sent.append(messages.parse_outbound(data))

    def close(self, code, reason):
        if self.closed is None:
            self.closed = (code, reason)
            if self.call is not None:
                self.call.connection_lost(code, reason)


def registry(config=None, **settings):
    clock = task.Clock()
    return CallRegistry(Settings(listen=[], config=config or Config(), **settings), clock), clock


def new_call(reg, query=None):
    link = FakeLink()
    call = reg.new_call(link, "127.0.0.1", query or {})
    link.call = call
    call.opened()
    return call, link


@contextmanager
def captured_log():
    """The log events emitted inside the block, as a list (failures included, with ``log_failure``)."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)
