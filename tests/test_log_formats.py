"""The log formats as pure functions (voicebridge/observe/formats.py) and the choice between them
(voicebridge/observe/output.py), on events made by Twisted's own loggers."""

from __future__ import annotations

import datetime
import io
import json
import os
import re

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher, eventFromJSON
from twisted.python import failure
from twisted.python import log as legacy_log

from voicebridge.observe import formats, output

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def emitted(emit) -> dict:
    """The event a ``twisted.logger.Logger`` call makes."""
    events = []
    emit(Logger(namespace="voicebridge.test", observer=events.append))
    (event,) = events
    return event


def legacy(*message, **kw) -> dict:
    """The event ``twisted.python.log.msg`` makes, as a new-style observer sees it."""
    events = []
    new = LogPublisher(events.append)
    publisher = legacy_log.LogPublisher(observerPublisher=new, publishPublisher=new)
    publisher.msg(*message, **kw)
    return events[0]


def test_a_record_is_flat_rendered_and_free_of_twisted_internals():
    event = emitted(
        lambda log: log.warn("refused callSid={callSid}: {why}", event_name="webhook.refused", callSid="CA1", why="bad")
    )
    record = formats.record(event)
    assert list(record)[:5] == ["time", "level", "event", "message", "logger"]
    assert RFC3339.match(record["time"])
    assert record == {**record, "level": "warn", "event": "webhook.refused", "message": "refused callSid=CA1: bad"}
    assert record["logger"] == "voicebridge.test" and record["callSid"] == "CA1" and record["why"] == "bad"
    assert not [k for k in record if k.startswith("log_") or k == "event_name"]


def test_the_time_is_rfc3339_utc():
    assert formats.rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
    assert formats.rfc3339(1796361993.9999) == "2026-12-04T05:26:33.999Z"


def test_a_json_line_is_one_ascii_line_whatever_the_fields_hold():
    class Thing:
        def __str__(self):
            return "a thing\nwith a newline"

    event = emitted(
        lambda log: log.info(
            "odd {message}",
            event_name="test.odd",
            message="the field",
            time="mine",
            nan=float("nan"),
            raw=b"\x00\xff",
            thing=Thing(),
            nested={"a": [1, (2, 3)], 4: {5}},
            name="caf\u00e9 \u2028 \udc80",
        )
    )
    line = formats.json_line(event)
    assert line.endswith("\n") and line.count("\n") == 1 and line.isascii()
    parsed = json.loads(line)
    assert parsed["message"] == "odd the field" and parsed["message_"] == "the field", "an own field never hides ours"
    assert parsed["time_"] == "mine" and RFC3339.match(parsed["time"])
    assert parsed["nan"] == "nan" and parsed["raw"] == "\x00\xff" and parsed["thing"] == "a thing\nwith a newline"
    assert parsed["nested"] == {"a": [1, [2, 3]], "4": [5]}
    assert parsed["name"] == "caf\u00e9 \u2028 \udc80"


def test_a_failure_is_one_traceback_field_and_indented_text_lines():
    try:
        raise RuntimeError("boom\nforged-line")
    except RuntimeError:
        event = emitted(
            lambda log: log.failure("handler failed callSid={callSid}", event_name="call.handler_error", callSid="CA9")
        )
    record = formats.record(event)
    assert record["level"] == "critical" and "RuntimeError: boom" in record["traceback"]
    assert json.loads(formats.json_line(event))["traceback"] == record["traceback"]
    lines = formats.text_line(event).splitlines()
    assert "call.handler_error handler failed callSid=CA9" in lines[0]
    assert lines[1].startswith("    Traceback") and all(line.startswith("    ") for line in lines[1:])
    journald = formats.text_line(event, journald=True).splitlines()
    assert journald[0].startswith("<2>critical call.handler_error")
    assert all(line.startswith("<2>    ") for line in journald[1:]), "each line of it carries the priority"


def test_a_text_line_escapes_what_would_start_a_line_and_names_the_call():
    event = emitted(
        lambda log: log.info("peer said {said}", event_name="test.said", said="a\r\nforged-line", callSid="CA1\nx", conn="c7")
    )
    line = formats.text_line(event)
    assert line.count("\n") == 1
    assert re.match(r"^\d{4}-\d\d-\d\dT\S+Z info  test\.said peer said a\\r\\nforged-line callSid=CA1\\nx conn=c7\n$", line), line
    assert "\\\\" not in formats.text_line(emitted(lambda log: log.info("{x}", event_name="t.x", x="a\\nb"))), "escaped once"


def test_a_text_line_does_not_repeat_the_call_the_message_names():
    event = emitted(
        lambda log: log.info("call ended callSid={callSid} conn={conn}", event_name="call.ended", callSid="CA1", conn="c7")
    )
    assert formats.text_line(event).rstrip("\n").endswith("call.ended call ended callSid=CA1 conn=c7")


@pytest.mark.parametrize(("level", "priority"), [("debug", 7), ("info", 6), ("warn", 4), ("error", 3), ("critical", 2)])
def test_journald_lines_start_with_the_syslog_priority(level, priority):
    event = emitted(lambda log: getattr(log, level)("hello", event_name="test.hello"))
    assert formats.text_line(event, journald=True) == f"<{priority}>{level:<5} test.hello hello\n"


def test_library_lines_are_named_after_their_package():
    event = emitted(lambda log: log.info("Starting reactor..."))
    event["log_namespace"] = "twisted.application.runner._runner.Runner"
    assert formats.record(event)["event"] == "twisted.log"
    plain = legacy("VoiceSite starting on 8080", system="-")
    record = formats.record(plain)
    assert (record["event"], record["message"], record["level"]) == ("twisted.log", "VoiceSite starting on 8080", "info")
    assert set(record) == {"time", "level", "event", "message", "logger"}, "log.msg's own keys are internals"


def test_a_legacy_err_keeps_its_traceback_apart():
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        event = legacy(failure=failure.Failure(), why="Unhandled error in Deferred:", isError=1)
    record = formats.record(event)
    assert record["message"] == "Unhandled error in Deferred:" and record["level"] == "critical"
    assert "ZeroDivisionError" in record["traceback"] and "failure" not in record and "why" not in record


def test_a_workers_message_keeps_its_format_specs_through_the_supervisor():
    original = emitted(lambda log: log.info("call ended in {duration:.1f}s on {day:%Y-%m-%d}", event_name="call.ended",
                                            duration=0.002404451370239258, day=datetime.date(2026, 12, 4)))  # fmt: skip
    written = io.StringIO()
    output.worker_observer(written)(original)
    relayed = eventFromJSON(written.getvalue().strip("\x1e\n"))
    relayed.update(worker=0, worker_pid=4242)
    assert json.loads(formats.json_line(relayed))["message"] == "call ended in 0.0s on 2026-12-04"
    assert "call ended in 0.0s on 2026-12-04 worker=0" in formats.text_line(relayed)


def test_a_workers_event_relayed_by_the_supervisor_carries_the_worker_and_no_internals():
    try:
        raise ValueError("inside the worker")
    except ValueError:
        original = emitted(lambda log: log.failure("handshake conn={conn} failed", event_name="handshake.failed", conn="c1"))
    # What the worker writes (twist's JSON, with the traceback as text) and supervisor.relay_log reads.
    written = io.StringIO()
    output.worker_observer(written)(original)
    relayed = eventFromJSON(written.getvalue().strip("\x1e\n"))
    relayed.update(worker=1, worker_pid=4242)
    line = formats.json_line(relayed)
    assert "__class_uuid__" not in line and "unpersistable" not in line
    parsed = json.loads(line)
    assert (parsed["worker"], parsed["worker_pid"], parsed["level"]) == (1, 4242, "critical")
    assert "ValueError: inside the worker" in parsed["traceback"]
    assert formats.text_line(relayed).splitlines()[0].endswith("handshake.failed handshake conn=c1 failed worker=1")


def test_auto_is_journald_on_the_journals_stream_text_on_a_terminal_json_elsewhere(tmp_path):
    with open(tmp_path / "log", "w") as stream:
        st = os.fstat(stream.fileno())
        assert output.choose("auto", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) == "journald"
        assert output.choose("auto", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}) == "json", "inherited, elsewhere"
        assert output.choose("auto", stream, {"JOURNAL_STREAM": "nonsense"}) == "json"
        assert output.choose("text", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) == "text", "asked for"
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        assert output.choose("auto", terminal, {}) == "text"
    os.close(master)
    assert output.choose("auto", io.StringIO(), {}) == "json"


def test_twists_own_log_format_is_read_before_the_plugin_name_only():
    assert output.twist_log_format(["twist", "--log-format=text", "voicebridge"]) == "text"
    assert output.twist_log_format(["twist", "--log-format", "JSON", "voicebridge"]) == "json"
    assert output.twist_log_format(["twist", "voicebridge", "--log-format=text"]) is None
    assert output.twist_log_format(["voicebridge", "run", "--log-format", "text"]) is None


def test_the_observer_writes_a_line_per_event_in_the_chosen_format():
    stream = io.StringIO()
    observer = output.observer_factory("json", {})(stream)
    observer(emitted(lambda log: log.info("one", event_name="test.one")))
    observer(emitted(lambda log: log.error("two", event_name="test.two")))
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["test.one", "test.two"]
    assert output.observer_factory("auto", {})(io.StringIO()).format == "json"


def test_a_stream_that_cannot_encode_gets_escapes_not_an_exception():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    output.LineObserver(stream, "text")(emitted(lambda log: log.info("caf\u00e9", event_name="test.cafe")))
    assert raw.getvalue().endswith(b"test.cafe caf\\xe9\n")


def test_the_options_hand_twist_the_observer(monkeypatch):
    from twisted.application.twist._options import TwistOptions

    monkeypatch.delenv(output.WORKER_ENVIRONMENT, raising=False)
    twist = TwistOptions()
    twist.parseOptions(["--log-format=text", "voicebridge", "--listen", "tcp:0", "--log-format", "journald"])
    assert twist["fileLogObserverFactory"](io.StringIO()).format == "journald", "voicebridge's option wins"
    twist = TwistOptions()
    twist.parseOptions(["voicebridge", "--listen", "tcp:0"])
    assert twist["fileLogObserverFactory"](io.StringIO()).format == "json", "auto"
    monkeypatch.setenv(output.WORKER_ENVIRONMENT, "{}")
    twist = TwistOptions()
    twist.parseOptions(["voicebridge", "--listen", "tcp:0", "--log-format", "text"])
    written = io.StringIO()
    twist["fileLogObserverFactory"](written)(emitted(lambda log: log.info("x", event_name="test.x")))
    assert written.getvalue().startswith("\x1e{"), "a worker writes twist's JSON: the supervisor reads it"


def test_an_unknown_format_is_a_usage_error():
    from twisted.python.usage import UsageError

    from voicebridge.daemon.tap import Options

    with pytest.raises(UsageError, match="--log-format 'xml': one of auto, text, json, journald"):
        Options().parseOptions(["--log-format", "xml"])


def test_levels_are_twisteds_names():
    assert set(formats.PRIORITIES) == {level.name for level in LogLevel.iterconstants()}


def test_every_line_break_any_reader_knows_is_escaped_in_text():
    event = emitted(lambda log: log.info("{said}", event_name="test.said", said="a\x85b\u2028c\u2029d\x1b[2Je\x00"))
    line = formats.text_line(event)
    assert len(line.splitlines()) == 1 and line.endswith("test.said a\\x85b\\u2028c\\u2029d\\x1b[2Je\\x00\n")


def test_a_huge_field_is_bounded_in_both_formats():
    event = emitted(lambda log: log.info("{big}", event_name="test.big", big="x" * 100_000))
    assert len(formats.text_line(event)) < 8300
    parsed = json.loads(formats.json_line(event))
    assert len(parsed["message"]) == len(parsed["big"]) == 8192 + len("...")
