import pytest

from voicebridge.web.publicurl import PublicURLError, PublicURLs, RequestView, TrustedProxies, is_loopback, parse_public_url


def view(**kw):
    base = dict(secure=False, host="internal:8080", peer="10.0.0.5", uri="/voice?businessId=b1")
    base.update(kw)
    return RequestView(**base)


def test_public_url_is_the_source_of_truth():
    urls = PublicURLs("https://voice.example.test/", TrustedProxies())
    v = view(forwarded_proto="http", forwarded_host="evil.example")
    assert urls.request_url(v) == "https://voice.example.test/voice?businessId=b1"
    assert urls.stream_url(v) == "wss://voice.example.test/twilio-media"


def test_public_url_with_a_path_prefix():
    urls = PublicURLs("https://example.test/vb", TrustedProxies())
    assert urls.stream_url(view()) == "wss://example.test/vb/twilio-media"
    assert urls.request_url(view()) == "https://example.test/vb/voice?businessId=b1"


def test_forwarded_headers_only_from_trusted_proxies():
    untrusted = PublicURLs(None, TrustedProxies())
    trusted = PublicURLs(None, TrustedProxies(["10.0.0.0/8"]))
    v = view(forwarded_proto="https", forwarded_host="voice.example.test", forwarded_for="203.0.113.9, 10.0.0.2")
    assert untrusted.stream_url(v) == "ws://internal:8080/twilio-media"
    assert untrusted.client(v) == "10.0.0.5"
    assert trusted.stream_url(v) == "wss://voice.example.test/twilio-media"
    assert trusted.client(v) == "203.0.113.9"


def test_forwarded_for_cannot_be_spoofed_past_the_proxy():
    trusted = PublicURLs(None, TrustedProxies(["10.0.0.5"]))
    # The client wrote its own X-Forwarded-For; the proxy appended the real address.
    v = view(forwarded_for="127.0.0.1, 198.51.100.7")
    assert trusted.client(v) == "198.51.100.7"


@pytest.mark.parametrize("host", [None, "", "a b", "evil/path", "x" * 300 + "/"])
def test_bad_host_headers_are_refused(host):
    with pytest.raises(PublicURLError):
        PublicURLs(None, TrustedProxies()).stream_url(view(host=host))


def test_ipv6_host_and_mapped_loopback():
    assert PublicURLs(None, TrustedProxies()).stream_url(view(host="[::1]:8080")) == "ws://[::1]:8080/twilio-media"
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("::1") and not is_loopback("10.1.1.1")
    assert "::ffff:10.1.2.3" in TrustedProxies(["10.0.0.0/8"])


@pytest.mark.parametrize("url", ["voice.example.com", "ftp://x", "https://x/?a=1", "https://u:p@x"])
def test_public_url_validation(url):
    with pytest.raises(PublicURLError):
        parse_public_url(url)


def test_trusted_proxy_validation():
    with pytest.raises(PublicURLError):
        TrustedProxies(["10.0.0.0/33"])
