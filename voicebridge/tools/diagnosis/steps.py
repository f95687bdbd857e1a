"""One line of the probe's checklist: a layer, whether it works, and the facts the verdicts read."""

from __future__ import annotations

from dataclasses import dataclass, field

from voicebridge.twilio.urls import STREAM, WEBHOOK

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

__all__ = ["FAIL", "OK", "SKIP", "STREAM", "WARN", "WEBHOOK", "Step", "find_step", "role_of"]


@dataclass
class Step:
    """One line of the checklist: a layer, whether it works, and the facts ``diagnose`` reads.

    ``layer`` is what was checked (resolve, connect, tls, url, webhook, twiml, stream-url,
    handshake, media, stop); ``name`` is unique in a run (``stream-tls`` is the tls layer of
    the stream's host).
    """

    name: str
    layer: str
    status: str = SKIP
    summary: str = "not reached"
    data: dict = field(default_factory=dict)
    seconds: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        out = {"name": self.name, "layer": self.layer, "status": self.status, "summary": self.summary}
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 4)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        out["data"] = self.data
        return out


def find_step(steps, name) -> Step | None:
    return next((s for s in steps if s.name == name), None)


def role_of(step: Step) -> str:
    return step.data.get("role", WEBHOOK)
