"""``POST /voice``: Twilio asks what to do with a call; voicebridge answers ``<Connect><Stream>``.

The per-call context travels as ``<Parameter>``s, never as a query string on the stream url,
which Twilio refuses (error 31920).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from twisted.logger import Logger
from twisted.web.resource import Resource

from voicebridge import twiml
from voicebridge.config import NoTenant
from voicebridge.logs import mask_number, printable
from voicebridge.publicurl import PublicURLError, RequestView, header

log = Logger(namespace="voicebridge.webhook")

FORM_TYPE = "application/x-www-form-urlencoded"
# Context the webhook URL's query string may carry, besides businessId and plan, that is passed on.
MAX_EXTRA_PARAMETERS = 20
# Twilio posts a few dozen fields; every field costs signature work, so a form of thousands is refused.
MAX_FORM_FIELDS = 500


class FormError(ValueError):
    def __init__(self, message: str, status: int = 415, reason: str = "bad-form"):
        super().__init__(message)
        self.status = status
        self.reason = reason


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
    try:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise FormError(f"the form has more than {MAX_FORM_FIELDS} fields", 400, "too-many-fields") from None


def call_parameters(query: dict[str, str], form: dict[str, str], tenant) -> dict[str, str]:
    """The ``<Parameter>``s for one call: its tenant, plan, numbers, CallSid, and the webhook's own query values."""
    parameters = {
        "businessId": query.get("businessId") or (tenant.id if tenant is not None and not tenant.is_default else None),
        "plan": query.get("plan") or (tenant.plan if tenant is not None else None),
        "to": form.get("To"),
        "from": form.get("From"),
        "callSid": form.get("CallSid"),
    }
    extras = [(k, v) for k, v in query.items() if k not in parameters][:MAX_EXTRA_PARAMETERS]
    parameters.update(extras)
    return {k: v for k, v in parameters.items() if v}


class VoiceWebhook(Resource):
    isLeaf = True
    # (tenant, RequestView) -> the <Connect action> URL for the call, or None; set by build_site.
    connect_action = None

    def __init__(self, settings, admission, urls):
        super().__init__()
        self.settings = settings
        self.config = settings.config
        self.admission = admission
        self.urls = urls
        self._warned_urls: set[str] = set()

    def render_GET(self, request):
        return self._answer(request, [])

    def render_POST(self, request):
        request.content.seek(0)
        body = request.content.read()
        try:
            form_pairs = parse_form(header(request, b"content-type"), body)
        except FormError as e:
            return self._error(request, e.status, e.reason, str(e))
        return self._answer(request, form_pairs)

    def _answer(self, request, form_pairs):
        view = RequestView.of(request)
        client = self.urls.client(view)
        try:
            url = self.urls.request_url(view)
            stream_url = self.urls.stream_url(view)
        except PublicURLError as e:
            return self._error(request, 400, "bad-host", str(e))
        form = dict(reversed(form_pairs))  # the first value of a repeated field wins
        call_sid = form.get("CallSid") or "-"
        refused = self._refused(request, view, client, url, form_pairs, call_sid)
        if refused is not None:
            return refused

        query = dict(reversed(parse_qsl(urlsplit(view.uri).query, keep_blank_values=True)))
        show = self.settings.show_numbers
        try:
            tenant = self.config.tenant_for(query.get("businessId"), form.get("To"))
        except NoTenant as e:
            log.warn(
                "webhook callSid={callSid} answered <Reject/>: {reason}",
                event_name="webhook.no_tenant",
                callSid=call_sid,
                to=mask_number(form.get("To"), show),
                businessId=printable(query.get("businessId")),
                reason=e.describe(show),
            )
            return self._twiml(request, twiml.reject())

        over = self.admission.call(form.get("CallSid"), tenant)
        if over is not None:
            log.warn(
                "webhook callSid={callSid} tenant={tenant} answered busy: {message}",
                event_name="webhook.busy",
                callSid=printable(call_sid, 40),
                tenant=tenant.id if tenant is not None else "-",
                message=over.message,
            )
            return self._twiml(request, twiml.busy())

        parameters, dropped = twiml.fit_parameters(call_parameters(query, form, tenant))
        for problem in dropped:
            log.warn("webhook callSid={callSid}: {problem}; not passed to the stream", callSid=call_sid, problem=problem)
        self._warn_stream_url(stream_url)
        log.info(
            "webhook callSid={callSid} from={from_} to={to} status={status} tenant={tenant} answered stream url {stream_url} "
            "with parameters {names}",
            event_name="webhook.answered",
            callSid=call_sid,
            from_=mask_number(form.get("From"), show),
            to=mask_number(form.get("To"), show),
            status=printable(form.get("CallStatus")),
            tenant=tenant.id if tenant is not None else "-",
            stream_url=stream_url,
            names=",".join(parameters),
            client=client,
        )
        action = self.connect_action(tenant, view) if self.connect_action is not None else None
        return self._twiml(request, twiml.connect_stream(stream_url, parameters, action=action))

    def _refused(self, request, view, client, url, form_pairs, call_sid):
        """None if the request is Twilio's (or development mode lets it in), else the logged refusal."""
        refusal = self.admission.webhook(
            client,
            url,
            form_pairs,
            header(request, b"x-twilio-signature"),
            header(request, b"x-twilio-webhooks-signature-settings"),
        )
        if refusal is None:
            return None
        log.warn(
            "webhook refused callSid={callSid} client={client} status={status} reason={reason}: {message}",
            event_name="webhook.refused",
            callSid=printable(call_sid, 40),
            client=client,
            status=refusal.status,
            reason=refusal.reason,
            message=refusal.message,
        )
        return self._error(request, refusal.status, refusal.reason, refusal.message, logged=True)

    def _warn_stream_url(self, stream_url: str) -> None:
        if stream_url in self._warned_urls or len(self._warned_urls) > 100:
            return
        self._warned_urls.add(stream_url)
        for warning in twiml.check_stream_url(stream_url):
            log.warn("{warning}", warning=warning)
        if self.urls.public_url is None:
            log.warn(
                "no --public-url: stream url {stream_url} was derived from the request's Host{proxy}; "
                "set --public-url to the URL Twilio uses",
                stream_url=stream_url,
                proxy=" and trusted X-Forwarded-* headers" if self.urls.trusted else "",
            )

    def _twiml(self, request, body: str) -> bytes:
        request.setHeader(b"Content-Type", b"text/xml; charset=utf-8")
        return body.encode("utf-8")

    def _error(self, request, status, reason, message, logged=False):
        if not logged:
            log.warn("webhook answered {status} reason={reason}: {message}", status=status, reason=reason, message=message)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"X-Voicebridge-Diagnosis", reason.encode("ascii"))
        return f"{status}: {message}\n".encode("utf-8")
