"""The default handler: the caller hears themselves, frame for frame.

It proves the whole path (Twilio, proxy, TLS, WebSocket, both directions) with no account
and no application behind it.
"""

from voicebridge.handlers.api import Handler


class EchoHandler(Handler):
    def on_media(self, audio: bytes, timestamp: int) -> None:
        self.call.send_audio(audio)
