"""The webhook's answer read the way Twilio reads it: by its Content-Type, then as TwiML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field


@dataclass
class TwiML:
    """What the webhook's answer tells Twilio to do, as far as streaming goes."""

    problem: str | None  # None, "not-twiml" or "no-stream-in-twiml"
    reason: str
    verb: str | None = None  # "Connect" (bidirectional) or "Start" (listen only)
    stream_url: str | None = None
    parameters: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "problem": self.problem,
            "reason": self.reason,
            "verb": self.verb,
            "stream_url": self.stream_url,
            "parameters": self.parameters,
            "notes": self.notes,
        }


TWIML_TYPES = ("text/xml", "application/xml", "text/html")


def read_twiml(content_type: str | None, body: bytes) -> TwiML:
    """Read the webhook's answer the way Twilio does: by its Content-Type, then as TwiML."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type.startswith("audio/"):
        return TwiML("no-stream-in-twiml", f"the answer is audio ({media_type}): Twilio plays it and hangs up")
    if media_type == "text/plain":
        return TwiML("no-stream-in-twiml", "the answer is text/plain: Twilio reads it aloud and hangs up")
    if media_type not in TWIML_TYPES:
        shown = media_type or "missing"
        return TwiML("not-twiml", f"Content-Type is {shown}; Twilio reads TwiML only from text/xml or application/xml (12300)")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        return TwiML("not-twiml", f"the body is not well-formed XML ({e}); Twilio cannot parse it (12100)")
    if root.tag != "Response":
        return TwiML("not-twiml", f"the root element is <{root.tag}>, not <Response> (12100)")
    unidirectional = None
    notes = []
    for verb in root:
        if verb.tag == "Connect":
            stream = verb.find("Stream")
            if stream is None:
                inner = ", ".join(f"<{c.tag}>" for c in verb) or "nothing"
                return TwiML("no-stream-in-twiml", f"<Connect> holds {inner}, not <Stream>", notes=notes)
            return _stream(stream, "Connect", notes)
        if verb.tag == "Start" and verb.find("Stream") is not None and unidirectional is None:
            unidirectional = verb.find("Stream")
        elif verb.tag in ("Reject", "Hangup") and unidirectional is None:
            return TwiML("no-stream-in-twiml", f"the TwiML ends the call with <{verb.tag}/> before any stream", notes=notes)
        elif verb.tag == "Redirect" and unidirectional is None:
            target = (verb.text or "").strip()
            return TwiML(
                "no-stream-in-twiml", f"the TwiML redirects to {target!r} before any stream; probe that URL", notes=notes
            )
        elif verb.tag not in ("Start",):
            notes.append(f"<{verb.tag}> runs before the stream")
    if unidirectional is not None:
        found = _stream(unidirectional, "Start", notes)
        found.notes.append("<Start><Stream> is one-way: the app can listen but cannot send audio back")
        return found
    verbs = ", ".join(f"<{v.tag}>" for v in root) or "nothing"
    return TwiML("no-stream-in-twiml", f"the TwiML holds {verbs}: no <Connect><Stream>", notes=notes)


def _stream(stream, verb: str, notes: list[str]) -> TwiML:
    url = (stream.get("url") or "").strip()
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    if not url:
        return TwiML("no-stream-in-twiml", f"<{verb}><Stream> has no url attribute", verb=verb, notes=notes)
    return TwiML(None, f'<{verb}><Stream url="{url}">', verb, url, parameters, notes)
