"""Requests Twilio signs and sends here: the voice webhook (``/voice``) and the ``<Connect action>``.

Both are read and checked the same way before they differ. Twilio's fields come in a form (POST)
or in the query string (GET, when the number or ``<Connect method="GET">`` says so); the signature
covers the URL and, for a POST, the form; a refusal is logged as ``PREFIX.refused`` with a stable
reason code and the callSid when the request carried one, and counted for ``/metrics``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from twisted.logger import Logger
from twisted.web.resource import Resource

from voicebridge.observe.logs import printable
from voicebridge.web.admission import Refusal
from voicebridge.web.publicurl import PublicURLError, RequestView, header

log = Logger(namespace="voicebridge.webhook")

FORM_TYPE = "application/x-www-form-urlencoded"
# Twilio sends a few dozen fields; every field costs signature work, so a form of thousands is refused.
MAX_FORM_FIELDS = 500

# The fields Twilio sends with a voice request (Twilio's TwiML docs, "Twilio's request to your
# application"). A GET carries them in the query string, beside the webhook URL's own parameters.
TWILIO_FIELDS = frozenset(
    {
        "AccountSid",
        "AddOns",
        "ApiVersion",
        "ApplicationSid",
        "CallSid",
        "CallStatus",
        "CallToken",
        "Called",
        "CalledCity",
        "CalledCountry",
        "CalledState",
        "CalledZip",
        "Caller",
        "CallerCity",
        "CallerCountry",
        "CallerName",
        "CallerState",
        "CallerZip",
        "Direction",
        "ForwardedFrom",
        "From",
        "FromCity",
        "FromCountry",
        "FromState",
        "FromZip",
        "ParentCallSid",
        "StirPassportToken",
        "StirVerstat",
        "To",
        "ToCity",
        "ToCountry",
        "ToState",
        "ToZip",
    }
)


class FormError(ValueError):
    def __init__(self, message: str, status: int = 415, reason: str = "bad-form"):
        super().__init__(message)
        self.status = status
        self.reason = reason


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``a=1&b=2`` -> every pair, repeated ones too; at most ``MAX_FORM_FIELDS``."""
    try:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise FormError(f"the request has more than {MAX_FORM_FIELDS} fields", 400, "too-many-fields") from None


def parse_form(content_type: str | None, body: bytes) -> list[tuple[str, str]]:
    """Twilio posts application/x-www-form-urlencoded UTF-8; keep every pair, repeated ones too."""
    if not body:
        return []
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != FORM_TYPE:
        raise FormError(f"Content-Type {media_type or 'none'!r} is not {FORM_TYPE}, which Twilio sends")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("the form body is not UTF-8") from None
    return parse_pairs(text)


def first_values(pairs) -> dict[str, str]:
    """The first value of each name: Twilio sends each field once, and a repeat must not override it."""
    return dict(reversed(pairs))


class TwilioRequest(Resource):
    """A signed request from Twilio about one call. Subclasses answer it in ``answer``."""

    isLeaf = True
    event_prefix = "webhook"  # PREFIX.refused in the log
    endpoint = "voice"  # the metrics label
    # True for a request about a call already in progress (the <Connect action>): a drain serves it.
    live_call = False

    def __init__(self, settings, admission, urls):
        super().__init__()
        self.settings = settings
        self.admission = admission
        self.urls = urls

    def render_GET(self, request):
        view = RequestView.of(request)
        try:
            pairs = parse_pairs(urlsplit(view.uri).query)
        except FormError as e:
            return self.refuse(request, view, None, Refusal(e.status, e.reason, str(e)))
        return self._checked(request, view, [], pairs)  # the signature covers the URL, query included

    def render_POST(self, request):
        view = RequestView.of(request)
        request.content.seek(0)
        try:
            pairs = parse_form(header(request, b"content-type"), request.content.read())
        except FormError as e:
            return self.refuse(request, view, None, Refusal(e.status, e.reason, str(e)))
        return self._checked(request, view, pairs, pairs)

    def _checked(self, request, view, signed_pairs, field_pairs):
        fields = first_values(field_pairs)
        try:
            url = self.urls.request_url(view)
        except PublicURLError as e:
            return self.refuse(request, view, fields.get("CallSid"), Refusal(400, "bad-host", str(e)))
        refusal = self.admission.webhook(
            self.urls.client(view),
            url,
            signed_pairs,
            header(request, b"x-twilio-signature"),
            header(request, b"x-twilio-webhooks-signature-settings"),
            live_call=self.live_call,
        )
        if refusal is not None:
            return self.refuse(request, view, fields.get("CallSid"), refusal)
        return self.answer(request, view, fields)

    def answer(self, request, view: RequestView, fields: dict[str, str]) -> bytes:
        """Twilio's fields (``CallSid``, ``To``, ...: from the form, or from the query of a GET) -> TwiML."""
        raise NotImplementedError

    def refuse(self, request, view: RequestView, call_sid: str | None, refusal: Refusal) -> bytes:
        """Log (``PREFIX.refused``), count, and answer the refusal with its status and reason code."""
        log.warn(
            "{endpoint} refused callSid={callSid} client={client} status={status} reason={reason}: {message}",
            event_name=f"{self.event_prefix}.refused",
            endpoint=self.endpoint,
            callSid=printable(call_sid, 40),
            client=self.urls.client(view),
            status=refusal.status,
            reason=refusal.reason,
            message=printable(refusal.message, 500),
        )
        registry = self.admission.registry
        if registry is not None:
            registry.webhook_refused(self.endpoint, refusal.reason)
        request.setResponseCode(refusal.status)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"X-Voicebridge-Diagnosis", refusal.reason.encode("ascii"))
        return f"{refusal.status}: {refusal.message}\n".encode("utf-8")

    @staticmethod
    def twiml(request, body: str) -> bytes:
        request.setHeader(b"Content-Type", b"text/xml; charset=utf-8")
        return body.encode("utf-8")
