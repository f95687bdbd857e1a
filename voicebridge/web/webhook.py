"""``POST /voice`` (or GET): Twilio asks what to do with a call; voicebridge answers ``<Connect><Stream>``.

The per-call context travels as ``<Parameter>``s, never as a query string on the stream url,
which Twilio refuses (error 31920).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.web.server import NOT_DONE_YET

from voicebridge.config.file import NoTenant
from voicebridge.observe.logs import mask_number, printable
from voicebridge.twilio import twiml
from voicebridge.twilio.urls import STREAM, check_url
from voicebridge.web.admission import Refusal
from voicebridge.web.publicurl import PublicURLError
from voicebridge.web.twiliorequest import TWILIO_FIELDS, TwilioRequest, first_values

log = Logger(namespace="voicebridge.webhook")

# Context the webhook URL's query string may carry, besides businessId and plan, that is passed on.
MAX_EXTRA_PARAMETERS = 20


def call_parameters(query: dict[str, str], form: dict[str, str], tenant) -> dict[str, str]:
    """The ``<Parameter>``s for one call: its tenant, plan, numbers, CallSid, and the webhook's own query values.

    ``query``: the webhook URL's own parameters (none of Twilio's fields); ``form``: Twilio's fields.
    """
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


class VoiceWebhook(TwilioRequest):
    """``/voice``: Twilio's voice webhook, POST (or GET, with Twilio's fields in the query)."""

    # (tenant, RequestView) -> the <Connect action> URL for the call, or None; set by build_site.
    connect_action = None

    def __init__(self, settings, admission, urls):
        super().__init__(settings, admission, urls)
        self.config = settings.config
        self._warned_urls: set[str] = set()

    def answer(self, request, view, fields):
        call_sid = printable(fields.get("CallSid"), 40)
        try:
            stream_url = self.urls.stream_url(view)
        except PublicURLError as e:
            return self.refuse(request, view, fields.get("CallSid"), Refusal(400, "bad-host", str(e)))
        # The webhook URL's own parameters (businessId, plan, ...); a GET's query also holds Twilio's fields.
        query = first_values(parse_qsl(urlsplit(view.uri).query, keep_blank_values=True))
        context = {k: v for k, v in query.items() if k not in TWILIO_FIELDS}
        show = self.settings.show_numbers
        try:
            tenant = self.config.tenant_for(context.get("businessId"), fields.get("To"))
        except NoTenant as e:
            log.warn(
                "webhook callSid={callSid} answered <Reject/>: {reason}",
                event_name="webhook.no_tenant",
                callSid=call_sid,
                to=mask_number(fields.get("To"), show),
                businessId=printable(context.get("businessId")),
                reason=e.describe(show),
            )
            return self.twiml(request, twiml.reject())

        over = self.admission.call(fields.get("CallSid"), tenant)
        if isinstance(over, defer.Deferred):  # the fleet's answer (--redis): Redis is asked first
            gone: list = []  # Twilio may give up meanwhile: notifyFinish fails when the connection is lost
            request.notifyFinish().addErrback(gone.append)
            over.addErrback(self._admission_failed, call_sid)
            over.addCallback(
                lambda o: self._later(request, gone, self._admitted(request, view, fields, tenant, context, stream_url, o))
            )
            return NOT_DONE_YET
        return self._admitted(request, view, fields, tenant, context, stream_url, over)

    @staticmethod
    def _admission_failed(failure, call_sid):
        log.failure(
            "admission failed for callSid={callSid}", failure, event_name="webhook.error", callSid=call_sid, level=LogLevel.error,
        )
        return Refusal(503, "over-capacity", "admission failed")

    @staticmethod
    def _later(request, gone: list, body: bytes) -> None:
        if not request.finished and not gone:
            request.write(body)
            request.finish()

    def _admitted(self, request, view, fields, tenant, context, stream_url, over) -> bytes:
        call_sid = printable(fields.get("CallSid"), 40)
        show = self.settings.show_numbers
        if over is not None:
            log.warn(
                "webhook callSid={callSid} tenant={tenant} answered busy: {message}",
                event_name="webhook.busy",
                callSid=call_sid,
                tenant=tenant.id if tenant is not None else "-",
                message=over.message,
            )
            return self.twiml(request, twiml.busy())

        parameters, dropped = twiml.fit_parameters(call_parameters(context, fields, tenant))
        for problem in dropped:
            log.warn(
                "webhook callSid={callSid}: {problem}; not passed to the stream",
                event_name="webhook.parameter_dropped",
                callSid=call_sid,
                problem=printable(problem, 200),
            )
        self._warn_stream_url(stream_url)
        if self.admission.streams is not None:
            self.admission.streams.answered(fields.get("CallSid"), tenant.id if tenant is not None else None, stream_url)
        log.info(
            "webhook callSid={callSid} from={from_} to={to} status={status} tenant={tenant} answered stream url {stream_url} "
            "with parameters {names}",
            event_name="webhook.answered",
            callSid=call_sid,
            from_=mask_number(fields.get("From"), show),
            to=mask_number(fields.get("To"), show),
            status=printable(fields.get("CallStatus")),
            tenant=tenant.id if tenant is not None else "-",
            stream_url=stream_url,
            names=printable(",".join(parameters), 500),
            client=self.urls.client(view),
        )
        action = self.connect_action(tenant, view) if self.connect_action is not None else None
        return self.twiml(request, twiml.connect_stream(stream_url, parameters, action=action))

    def _warn_stream_url(self, stream_url: str) -> None:
        if stream_url in self._warned_urls or len(self._warned_urls) > 100:
            return
        self._warned_urls.add(stream_url)
        for problem in check_url(stream_url, STREAM):  # the probe's rules: what a real call would meet
            log.warn(
                "stream url {stream_url} would fail for a real call: {problem}; set --public-url https://PUBLIC_HOST",
                event_name="webhook.stream_url",
                stream_url=stream_url,
                problem=problem.text,
                kind=problem.kind,
            )
        if self.urls.public_url is None:
            log.warn(
                "no --public-url: stream url {stream_url} was derived from the request's Host{proxy}; "
                "set --public-url to the URL Twilio uses",
                event_name="webhook.stream_url",
                stream_url=stream_url,
                kind="no-public-url",
                proxy=" and trusted X-Forwarded-* headers" if self.urls.trusted else "",
            )
