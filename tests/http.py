"""Small blocking HTTP helpers for tests against a daemon subprocess."""

from __future__ import annotations

import base64
import http.client
import os
from urllib.parse import urlencode


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, host="127.0.0.1", context=None
):
    """One HTTP request; HTTPS when ``context`` (an ``ssl.SSLContext``) is given."""
    if context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def post_form(port: int, path: str, form: list | dict, headers: dict | None = None, context=None):
    body = urlencode(form).encode()
    all_headers = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8", **(headers or {})}
    return request(port, "POST", path, body, all_headers, context=context)


def upgrade_request(port: int, path: str = "/twilio-media", headers: dict | None = None, context=None):
    """A WebSocket opening handshake, read as plain HTTP: for handshakes that must be refused."""
    all_headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    return request(port, "GET", path, headers=all_headers, context=context)


def call_form(call_sid="CA" + "1" * 32, to="+15550100001", from_="+15557654321", **extra) -> list:
    """The fields Twilio posts for an inbound call: the probe's own form, with these numbers and fields."""
    from voicebridge.tools.probe import twilio_form

    fields = [("Called", to), ("Caller", from_), ("From", from_), ("To", to), *extra.items()]
    return twilio_form(call_sid, "AC" + "2" * 32, fields)
