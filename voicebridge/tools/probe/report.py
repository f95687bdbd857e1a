"""A probe run's result: the checklist, the diagnosis, as text or JSON."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from voicebridge.tools import diagnosis as dx
from voicebridge.tools.diagnosis import FAIL, OK, SKIP, WARN, Step


@dataclass
class Report:
    url: str
    steps: list
    diagnosis: dx.Diagnosis
    local: bool = False

    @property
    def ok(self) -> bool:
        return self.diagnosis.ok

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "diagnosis": self.diagnosis.code,
            "message": self.diagnosis.message,
            "fix": self.diagnosis.fix,
            "twilio_error": self.diagnosis.twilio_error,
            "url": self.url,
            "local": self.local,
            "steps": [s.as_json() for s in self.steps],
        }

    def text(self) -> str:
        marks = {OK: "ok  ", WARN: "warn", FAIL: "FAIL", SKIP: "-   "}
        width = max(len(s.name) for s in self.steps)
        lines = [f"voicebridge probe {self.url}{' (--local)' if self.local else ''}", ""]
        for s in self.steps:
            lines.append(f"  {marks[s.status]}  {s.name.ljust(width)}  {s.summary}")
            for warning in s.warnings:
                lines.append(f"  {'':4}  {'':{width}}  ! {warning}")
        d = self.diagnosis
        lines += ["", f"diagnosis: {d.code}"]
        lines += textwrap.wrap(d.message, 100, initial_indent="  ", subsequent_indent="  ")
        lines.append("fix:")
        for paragraph in d.fix.splitlines():
            if paragraph.startswith("    "):
                lines.append("  " + paragraph)
            else:
                lines += textwrap.wrap(paragraph, 100, initial_indent="  ", subsequent_indent="  ") or [""]
        if not d.ok:
            lines.append(f"a real call shows Twilio error: {d.twilio_error}")
        return "\n".join(lines)
