"""TwiML answers for the voice webhook, built with Twilio's own library.

Pure: no request, no I/O. Twilio's limits are enforced here so a bad value never reaches a call.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twilio.twiml.voice_response import VoiceResponse

# Twilio: each <Parameter> name and value must stay under 500 characters.
MAX_PARAMETER_LENGTH = 499


class StreamURLError(ValueError):
    """A stream URL Twilio would refuse; the message names the Twilio error a call would show."""


def check_stream_url(url: str) -> None:
    """Raise for a stream URL that must never be answered (Twilio refuses it, or it is not a WebSocket URL).

    What would only fail for a real call (``ws://``, a port other than 443, a host Twilio cannot
    reach) is ``diagnosis.check_url``'s to say: the webhook warns with it, as the probe does.
    """
    parts = urlsplit(url)
    if parts.query or url.endswith("?"):
        raise StreamURLError(
            f"stream url {url!r} has a query string; Twilio refuses it (error 31920): pass values as <Parameter>s instead"
        )
    if parts.fragment:
        raise StreamURLError(f"stream url {url!r} has a fragment")
    if parts.scheme not in ("wss", "ws") or not parts.hostname:
        raise StreamURLError(f"stream url {url!r} is not a ws(s):// url with a host")


def fit_parameters(parameters: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Keep the parameters Twilio accepts; say which were dropped and why."""
    kept, dropped = {}, []
    for name, value in parameters.items():
        if value is None:
            continue
        name, value = str(name), str(value)
        if not name or len(name) > MAX_PARAMETER_LENGTH:
            dropped.append(f"parameter name {name[:40]!r} is empty or over {MAX_PARAMETER_LENGTH} characters")
        elif len(value) > MAX_PARAMETER_LENGTH:
            dropped.append(f"parameter {name!r} value is over {MAX_PARAMETER_LENGTH} characters")
        else:
            kept[name] = value
    return kept, dropped


def connect_stream(stream_url: str, parameters: dict[str, str], action: str | None = None) -> str:
    """``<Response><Connect><Stream url=..>`` with one ``<Parameter>`` per context value.

    With ``action``, Twilio requests that URL when the stream ends and runs the TwiML it returns.
    """
    check_stream_url(stream_url)
    response = VoiceResponse()
    connect = response.connect(action=action) if action else response.connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    return response.to_xml()


def busy() -> str:
    """Tell the caller the line is busy and end the call (Twilio plays a busy tone)."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return response.to_xml()


def reject() -> str:
    """Refuse the call before it is answered (no charge to the caller)."""
    response = VoiceResponse()
    response.reject()
    return response.to_xml()


def hang_up() -> str:
    response = VoiceResponse()
    response.hangup()
    return response.to_xml()


def say_and_hang_up(message: str) -> str:
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return response.to_xml()


def dial(destination: str) -> str:
    """Connect the caller onward: ``<Dial><Number>`` for an E.164 number, ``<Dial><Sip>`` for a ``sip:`` URI."""
    response = VoiceResponse()
    dialing = response.dial()
    if destination.lower().startswith(("sip:", "sips:")):
        dialing.sip(destination)
    else:
        dialing.number(destination)
    return response.to_xml()
