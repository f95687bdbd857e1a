"""docs/handlers.md's worked example is real code: it is run here exactly as the document shows it."""

import re
import tomllib

import pytest

from tests.daemon import REPO
from tests.fakes import new_call, registry
from voicebridge import handlers
from voicebridge.call.resolve import resolve_handlers
from voicebridge.config.file import Settings, parse_config
from voicebridge.twilio import messages as m

SID, CALL, ACC = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32
DOC = (REPO / "docs" / "handlers.md").read_text()


def block(language: str, first_line: str) -> str:
    for code in re.findall(rf"```{language}\n(.*?)```", DOC, re.S):
        if code.startswith(first_line):
            return code
    raise AssertionError(f"no ```{language} block starting {first_line!r} in docs/handlers.md")


@pytest.fixture
def tone(tmp_path, monkeypatch):
    package = tmp_path / "vbtone"
    package.mkdir()
    (package / "__init__.py").write_text(block("python", "# vbtone/__init__.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(handlers.BUILTIN, "tone", "vbtone:ToneHandler")


def test_the_worked_example_plays_tones_and_hangs_up_after_the_last(tone):
    reg, _ = registry(handler="tone")
    call, link = new_call(reg)
    call.text_received(m.twilio_start(SID, CALL, ACC))
    call.text_received(m.twilio_dtmf(SID, "1", 2))
    call.text_received(m.twilio_dtmf(SID, "#", 3))
    assert [type(x).__name__ for x in link.sent] == ["Media", "Mark", "Media", "Mark"]
    assert len(link.sent[0].payload) == 1600, "200 ms of 8 kHz mu-law"
    assert [link.sent[1].name, link.sent[3].name] == ["tone-1", "goodbye"]
    call.text_received(m.twilio_mark(SID, "tone-1", 4))
    assert link.closed is None
    call.text_received(m.twilio_mark(SID, "goodbye", 5))
    assert link.closed == (1000, "hangup")


def test_the_documented_config_is_valid_and_bad_options_are_named(tone):
    config = parse_config(tomllib.loads(block("toml", "[handlers.tone]")))
    resolved = resolve_handlers(Settings(listen=[], config=config))
    assert resolved["business-1"][2] == {"frequency": 440, "ms": 300}
    entry_point = tomllib.loads(block("toml", "[project]"))["project"]["entry-points"]["voicebridge.handlers"]
    assert entry_point == {"tone": "vbtone:ToneHandler"}
    with pytest.raises(ValueError, match="frequency: 5 is not"):
        resolve_handlers(Settings(listen=[], handler="tone", config=parse_config({"handlers": {"tone": {"frequency": 5}}})))
