"""Signatures as Twilio computes them; the reference values are Twilio's published example."""

from voicebridge.twilio.signatures import SignatureChecker, stream_candidates

# From Twilio's "Webhooks security" documentation (token 12345, the documented URL and form).
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_FORM = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+12349013030"),
    ("Digits", "1234"),
    ("From", "+12349013030"),
    ("To", "+18005551212"),
]
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_matches_twilio_documented_example():
    checker = SignatureChecker(DOC_TOKEN)
    assert checker.sign(DOC_URL, DOC_FORM) == DOC_SIGNATURE
    assert checker.valid_webhook(DOC_URL, DOC_FORM, DOC_SIGNATURE)


def test_order_of_form_fields_does_not_matter_but_every_field_counts():
    checker = SignatureChecker(DOC_TOKEN)
    assert checker.valid_webhook(DOC_URL, list(reversed(DOC_FORM)), DOC_SIGNATURE)
    assert not checker.valid_webhook(DOC_URL, DOC_FORM + [("Extra", "1")], DOC_SIGNATURE)
    assert not checker.valid_webhook(DOC_URL, DOC_FORM[:-1], DOC_SIGNATURE)
    assert not checker.valid_webhook(DOC_URL.replace("foo=1", "foo=2"), DOC_FORM, DOC_SIGNATURE)
    assert not checker.valid_webhook(DOC_URL, DOC_FORM, None)
    assert not checker.valid_webhook(DOC_URL, DOC_FORM, "")


def test_repeated_form_fields_are_all_signed():
    checker = SignatureChecker("t")
    form = [("A", "2"), ("A", "1"), ("B", "x")]
    signature = checker.sign("https://h/voice", form)
    assert checker.valid_webhook("https://h/voice", form, signature)
    assert not checker.valid_webhook("https://h/voice", [("A", "2"), ("B", "x")], signature)


def test_https_port_is_dropped_or_added_as_twilio_does():
    checker = SignatureChecker("t")
    signature = checker.sign("https://h.example/voice")
    assert checker.valid_webhook("https://h.example:443/voice", [], signature)
    assert checker.valid_webhook("https://h.example/voice", [], checker.sign("https://h.example:443/voice"))


def test_sha256_settings_header():
    checker = SignatureChecker("t")
    import base64
    import hashlib
    import hmac

    url = "https://h/voice"
    expected = base64.b64encode(hmac.new(b"t", (url + "Ax").encode(), hashlib.sha256).digest()).decode()
    assert checker.valid_webhook(url, [("A", "x")], expected, "key=k1,algorithm=HMAC_SHA256")
    assert not checker.valid_webhook(url, [("A", "x")], expected)


def test_stream_candidates_and_trailing_slash():
    checker = SignatureChecker("t")
    base = "wss://h.example/twilio-media"
    assert stream_candidates(base) == [base, base + "/"]
    assert checker.valid_stream(stream_candidates(base), checker.sign(base + "/")) == base + "/"
    assert checker.valid_stream(stream_candidates(base), checker.sign("wss://other/twilio-media")) is None
    assert checker.valid_stream(stream_candidates(base, "a=1"), checker.sign(base + "?a=1")) == base + "?a=1"


def test_token_never_in_repr():
    assert "secret" not in repr(SignatureChecker("secret"))
