"""Properties over everything a hostile peer controls: frames into the parser and a Call, signatures into the checker."""

import base64
import json
import string

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.fakes import new_call, registry
from voicebridge.twilio import messages as m
from voicebridge.twilio.signatures import SignatureChecker, stream_candidates

MESSAGE_TYPES = (m.Connected, m.Start, m.Media, m.Dtmf, m.Mark, m.Stop, m.Unknown)
EVENTS = ["connected", "start", "media", "dtmf", "mark", "stop", "clear", "transcription", ""]

json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
field_values = json_value | st.sampled_from(["MZ1", "CA1", "5", "-1", "AAAA", "***", "", "18446744073709551616"])


@st.composite
def message_like(draw):
    """Objects shaped like Twilio's, each field possibly wrong: reaches the parser's deeper branches."""
    obj = {"event": draw(st.sampled_from(EVENTS) | json_value)}
    for key in draw(st.lists(st.sampled_from(["streamSid", "sequenceNumber", "start", "media", "dtmf", "mark", "stop"]))):
        if key in ("start", "media", "dtmf", "mark", "stop") and draw(st.booleans()):
            inner_keys = ["streamSid", "callSid", "accountSid", "tracks", "customParameters", "mediaFormat", "payload"]
            inner_keys += ["timestamp", "chunk", "track", "digit", "name"]
            obj[key] = draw(st.dictionaries(st.sampled_from(inner_keys), field_values, max_size=6))
        else:
            obj[key] = draw(field_values)
    return json.dumps(obj).encode()


frames = st.binary(max_size=300) | message_like() | st.builds(lambda v: json.dumps(v).encode(), json_value)


@given(frames)
@settings(max_examples=300)
def test_the_parser_returns_a_message_or_raises_message_error_only(frame):
    try:
        message = m.parse(frame)
    except m.MessageError as e:
        assert e.reason in {"invalid-json", "not-object", "missing-event", "missing-field", "bad-field", "bad-base64"} | {
            "too-deep",
            "too-many-parameters",
            "parameter-too-long",
        }
        return
    assert isinstance(message, MESSAGE_TYPES)


sids = st.text(string.ascii_letters + string.digits, min_size=1, max_size=40)


@given(sids, st.binary(max_size=400), st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_media_round_trips(sid, audio, chunk, timestamp, seq):
    parsed = m.parse(m.twilio_media(sid, audio, chunk, timestamp, seq))
    assert (parsed.stream_sid, parsed.payload, parsed.chunk, parsed.timestamp, parsed.sequence_number) == (
        sid,
        audio,
        chunk,
        timestamp,
        seq,
    )
    assert m.parse_outbound(m.media(sid, audio)).payload == audio


@given(sids, sids, st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=5))
def test_start_round_trips(stream_sid, call_sid, params):
    parsed = m.parse(m.twilio_start(stream_sid, call_sid, "AC1", params))
    assert (parsed.stream_sid, parsed.call_sid, parsed.custom_parameters) == (stream_sid, call_sid, params)


# No lone surrogates: JSON carrying one is not UTF-8, so it is (rightly) invalid-json before base64.
@given(st.text(alphabet=st.characters(blacklist_characters="=", blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_a_payload_that_is_not_base64_is_named_as_such(payload):
    try:
        base64.b64decode(payload, validate=True)
        assume(False)
    except ValueError:
        pass
    frame = json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": payload}}).encode()
    try:
        m.parse(frame)
    except m.MessageError as e:
        assert e.reason == "bad-base64"
    else:
        raise AssertionError("accepted a payload that is not base64")


@given(st.lists(frames, max_size=12), st.booleans())
@settings(max_examples=150)
def test_a_call_survives_any_sequence_of_frames(junk, started):
    """Never raises out of the protocol; every error has a reason; the call keeps its stream."""
    reg, _ = registry()
    call, link = new_call(reg)
    if started:
        call.text_received(m.twilio_start("MZ1", "CA1", "AC1", {}))
    for frame in junk:
        call.text_received(frame)
    if started and call.state == "started":
        call.text_received(m.twilio_media("MZ1", b"ok", 1, 0, 1))
        assert link.sent and link.sent[-1].payload == b"ok", "good media after junk is still echoed"
    assert all(isinstance(reason, str) and reason for reason in call.errors)


# Signatures.

CHECKER = SignatureChecker("property-token")
hosts = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}\Z")
paths = st.from_regex(r"\A(/[A-Za-z0-9._~-]{0,12}){0,4}\Z")
queries = st.lists(st.tuples(st.text(string.ascii_letters, min_size=1, max_size=8), st.text(max_size=12)), max_size=4)
params = st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=24)), max_size=8)


@st.composite
def urls(draw):
    from urllib.parse import urlencode

    query = draw(queries)
    return f"{draw(st.sampled_from(['https', 'http']))}://{draw(hosts)}{draw(paths)}" + (f"?{urlencode(query)}" if query else "")


@given(urls(), params, st.randoms())
def test_a_signature_holds_for_its_url_and_form_in_any_order(url, form, rnd):
    signature = CHECKER.sign(url, form)
    shuffled = list(form)
    rnd.shuffle(shuffled)
    assert CHECKER.valid_webhook(url, shuffled, signature)


@given(urls(), params, st.text(min_size=1, max_size=5))
def test_a_changed_or_added_parameter_breaks_the_signature(url, form, extra):
    signature = CHECKER.sign(url, form)
    added = form + [("Injected" + extra, "1")]
    assert not CHECKER.valid_webhook(url, added, signature)
    if form:
        name, value = form[0]
        values = {v for n, v in form if n == name}
        changed = value + extra
        assume(changed not in values)
        tampered = [(name, changed)] + form[1:]
        assert not CHECKER.valid_webhook(url, tampered, signature)


@given(urls(), params, urls())
def test_a_signature_is_not_valid_for_another_url(url, form, other):
    assume(other.rstrip("/") != url.rstrip("/"))
    signature = CHECKER.sign(url, form)
    assert not CHECKER.valid_webhook(other, form, signature)
    assert CHECKER.valid_stream(stream_candidates(other), CHECKER.sign(url)) is None or other.split("?")[0].rstrip(
        "/"
    ) == url.split("?")[0].rstrip("/")


@given(hosts, paths)
def test_https_signatures_hold_with_and_without_the_port(host, path):
    bare, with_port = f"https://{host}{path}", f"https://{host}:443{path}"
    assert CHECKER.valid_webhook(with_port, [], CHECKER.sign(bare))
    assert CHECKER.valid_webhook(bare, [], CHECKER.sign(with_port))


@given(hosts, paths)
def test_stream_signatures_hold_with_or_without_a_trailing_slash(host, path):
    url = f"wss://{host}{path}/twilio-media"
    assert CHECKER.valid_stream(stream_candidates(url), CHECKER.sign(url)) == url
    assert CHECKER.valid_stream(stream_candidates(url), CHECKER.sign(url + "/")) == url + "/"


@given(st.text(max_size=80), params, st.text(max_size=60), st.none() | st.text(max_size=40))
@settings(max_examples=300)
def test_the_checker_never_raises_whatever_it_is_given(url, form, signature, settings_header):
    """URLs urllib cannot parse, signatures of any bytes (as latin-1 text), any settings header: a bool, never an exception."""
    assert CHECKER.valid_webhook(url, form, signature, settings_header) in (True, False)
    assert CHECKER.valid_stream(stream_candidates(url, "a=1"), signature) in (None, *stream_candidates(url, "a=1"))


@given(st.sampled_from(["http://h:99999/voice", "http://[::1/voice", "https://h:-1/x", "http://h:port/x"]), params)
def test_unparseable_urls_match_nothing(url, form):
    assert CHECKER.valid_webhook(url, form, "c2lnbmF0dXJl") is False


# Bounds (issue 16): nesting, sizes and types anywhere in Twilio's messages.

BOUND_REASONS = {
    "invalid-json",
    "not-object",
    "missing-event",
    "missing-field",
    "bad-field",
    "bad-base64",
    "too-deep",
    "too-many-parameters",
    "parameter-too-long",
}
TWILIO_MESSAGES = [
    m.twilio_connected(),
    m.twilio_start("MZ1", "CA1", "AC1", {"businessId": "b1"}),
    m.twilio_media("MZ1", b"\x01" * 160, 1, 0, 2),
    m.twilio_dtmf("MZ1", "5", 3),
    m.twilio_mark("MZ1", "done", 4),
    m.twilio_stop("MZ1", "CA1", "AC1", 5),
]


def nest(value, depth: int, as_dict: bool):
    for _ in range(depth):
        value = {"a": value} if as_dict else [value]
    return value


deep_values = st.builds(nest, json_leaf, st.integers(0, 1100), st.booleans())
any_value = json_value | deep_values


def field_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from field_paths(value, (*prefix, key))


@st.composite
def twilio_message_with_a_value_anywhere(draw):
    obj = json.loads(draw(st.sampled_from(TWILIO_MESSAGES)))
    path = draw(st.sampled_from(list(field_paths(obj))))
    value = draw(any_value)
    if not path or draw(st.booleans()):  # a field Twilio does not send, beside the ones it does
        parent = obj
        for key in path[:-1] if path else ():
            parent = parent[key]
        if not isinstance(parent, dict):
            parent = obj
        parent[draw(st.sampled_from(["x", "new", "event", "streamSid"]))] = value
    else:
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    try:
        return json.dumps(obj).encode()
    except RecursionError:
        return b"[" * 2000 + b"]" * 2000


def flat(value) -> bool:
    scalar = (str, int, float, bool, bytes, type(None))
    if isinstance(value, dict):
        return all(isinstance(v, scalar) for v in value.values())
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, scalar) for v in value)
    return isinstance(value, scalar)


@given(twilio_message_with_a_value_anywhere())
@settings(max_examples=150, deadline=None)
def test_any_value_at_any_depth_in_any_field_gets_a_message_or_a_reason(frame):
    try:
        message = m.parse(frame)
    except m.MessageError as e:
        assert e.reason in BOUND_REASONS
        assert m.media_fields(frame) is None
        return
    for name in message.__dataclass_fields__:
        assert name == "raw" or flat(getattr(message, name)), name
    fast = m.media_fields(frame)
    if fast is not None:
        assert isinstance(message, m.Media) and fast == (message.stream_sid, message.payload, message.timestamp)


@given(st.integers(0, 1100), st.booleans(), st.sampled_from(TWILIO_MESSAGES))
@settings(max_examples=100, deadline=None)
def test_nesting_past_the_bound_is_too_deep_wherever_it_is(depth, as_dict, frame):
    obj = json.loads(frame)
    obj["x"] = nest(1, depth, as_dict)
    try:
        data = json.dumps(obj).encode()
    except RecursionError:
        return
    if depth + 1 >= m.MAX_DEPTH:  # the top object is one level, the value's containers the rest
        try:
            m.parse(data)
        except m.MessageError as e:
            assert e.reason == "too-deep"
        else:
            assert depth + 1 == m.MAX_DEPTH
    else:
        m.parse(data)


names_or_values = st.text(max_size=600)


@given(st.dictionaries(names_or_values, names_or_values, max_size=40))
@settings(max_examples=200, deadline=None)
def test_custom_parameters_are_taken_exactly_when_within_the_bounds(parameters):
    frame = m.twilio_start("MZ1", "CA1", "AC1", parameters)
    within = len(parameters) <= m.MAX_PARAMETERS and all(
        len(k) <= m.MAX_PARAMETER_LENGTH and len(v) <= m.MAX_PARAMETER_LENGTH for k, v in parameters.items()
    )
    try:
        start = m.parse(frame)
    except m.MessageError as e:
        assert not within and e.reason in {"too-many-parameters", "parameter-too-long"}
    else:
        assert within and start.custom_parameters == parameters


@given(st.sampled_from(["tracks", "mediaFormat", "customParameters", "callSid", "accountSid", "streamSid"]), json_value)
@settings(max_examples=300, deadline=None)
def test_a_start_field_of_any_type_is_typed_or_refused(field, value):
    obj = json.loads(m.twilio_start("MZ1", "CA1", "AC1", {}))
    obj["start"][field] = value
    try:
        start = m.parse(json.dumps(obj).encode())
    except m.MessageError as e:
        assert e.reason in BOUND_REASONS
        return
    assert all(isinstance(t, str) for t in start.tracks)
    assert all(isinstance(v, str) for v in start.custom_parameters.values())
    assert flat(start.media_format) and isinstance(start.call_sid, str)
