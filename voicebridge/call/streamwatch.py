"""Calls the webhook answered with ``<Connect><Stream>`` whose stream never came, and what reached
``/twilio-media`` meanwhile. Pure: time is passed in, events are returned for the caller to log.

The symptom voicebridge exists for: a signed webhook, ``<Connect><Stream url=wss://...>``, then
nothing. Each answered call is expected to open its stream (Twilio connects within a second or
two); one that has not started when its reservation lapses (``capacity.RESERVATION_SECONDS``) is
a missing stream. One is a warning; several in a row (``STREAK``), or most of the recent calls
(``WINDOW``), is an episode, logged once, naming the layer from what ``/twilio-media`` saw in it:

- nothing at all: Twilio never got through to the daemon (the stream host's DNS, TLS, or an edge
  that does not forward ``/twilio-media``);
- requests without ``Upgrade``: a proxy strips the hop-by-hop upgrade headers;
- handshakes refused: by signature (the URL checked), capacity, or the drain;
- streams that opened and closed before ``start``.

Bounded: at most ``MAX_PENDING`` calls are awaited (the oldest are dropped beyond it), and
``WINDOW`` outcomes are remembered. Cheap: 3.8 us a call (its answer and its start, measured with
timeit), 0.3 us a request to ``/twilio-media``, nothing per media frame.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from voicebridge.twilio.urls import STREAM, check_url

STREAK = 3  # answered calls in a row without a stream: an episode
WINDOW = 10  # ... or more than half of the last WINDOW outcomes (at least MIN_IN_WINDOW of them)
MIN_IN_WINDOW = 4
MAX_PENDING = 10_000
MAX_SID = 64  # a CallSid is 34 characters; a longer one is someone else's, kept to this much (bounded memory)

# What reached /twilio-media, by kind (the funnel's stages and the refusals).
REQUEST, NO_UPGRADE, REFUSED, ACCEPTED, CLOSED_BEFORE_START, STARTED = (
    "request",
    "no-upgrade",
    "refused",
    "accepted",
    "closed-before-start",
    "started",
)

NGINX_LINES = (
    "proxy_pass {upstream}; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
    "proxy_set_header Connection $connection_upgrade; proxy_set_header Host $host; "
    "proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
    "(a location that sets headers repeats the server's; with map $http_upgrade $connection_upgrade "
    "{{ default upgrade; '' close; }} in http {{ }})"
)


@dataclass
class Expected:
    call_sid: str
    tenant: str | None
    stream_url: str
    answered_at: float
    seen_before: Counter  # the totals of what /twilio-media saw when the webhook answered


@dataclass(frozen=True)
class Event:
    """A line to log: ``name`` is the event_name, ``level`` warn/error/info, ``fields`` its fields."""

    name: str
    level: str
    fields: dict = field(default_factory=dict)


def seen_text(seen: Counter) -> str:
    """What /twilio-media saw, in words: ``nothing`` or ``2 requests (2 without Upgrade)``."""
    requests = seen.get(REQUEST, 0)
    if not requests:
        return "nothing"
    parts = []
    for kind, words in ((NO_UPGRADE, "without Upgrade"), (ACCEPTED, "accepted"), (CLOSED_BEFORE_START, "closed before start")):
        if seen.get(kind):
            parts.append(f"{seen[kind]} {words}")
    refusals = {k.split(":", 1)[1]: v for k, v in seen.items() if k.startswith(REFUSED + ":")}
    for reason, count in sorted(refusals.items()):
        parts.append(f"{count} refused {reason}")
    return f"{requests} request(s)" + (f" ({', '.join(parts)})" if parts else "")


def webhook_url(stream_url: str) -> str:
    """The voice webhook URL beside a stream URL the daemon handed out (wss://h/p/twilio-media -> https://h/p/voice)."""
    parts = urlsplit(stream_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    path = parts.path.rsplit("/", 1)[0] + "/voice"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def probe_command(stream_url: str) -> str:
    url = webhook_url(stream_url)
    local = " --local" if url.startswith("http://") else ""
    return f"TWILIO_AUTH_TOKEN=... voicebridge probe {url}{local}"


def layer(seen: Counter, stream_url: str, details: dict) -> tuple[str, str]:
    """(code, explanation) of why streams do not arrive, from what /twilio-media saw in the episode.

    ``details``: the last detail seen per kind (a refusal's message names the URL checked).
    """
    host = urlsplit(stream_url).hostname or stream_url
    refusals = Counter({k.split(":", 1)[1]: v for k, v in seen.items() if k.startswith(REFUSED + ":")})
    # A refused handshake that carried its upgrade headers says they pass: that refusal is the layer, even if
    # plain GETs (a probe's, a browser's) also came. Not counted as such: a wrong method, a rewritten Connection.
    stripped = seen.get(NO_UPGRADE, 0) + refusals.pop("connection-upgrade-missing", 0)
    refusals.pop("method-not-allowed", None)
    if refusals:
        reason, count = refusals.most_common(1)[0]
        detail = details.get(f"{REFUSED}:{reason}", "")
        if reason.startswith("signature"):
            why = (
                f"the signature check failed ({detail}). Twilio signs the stream URL it was given, {stream_url}: "
                "--public-url must be the base of the URL configured in Twilio, and the token Twilio's"
            )
        elif reason == "over-capacity":
            why = f"the daemon was full ({detail}): raise --max-calls or add capacity"
        elif reason == "draining":
            why = "the daemon was draining: Twilio reached an instance that is stopping; route calls to a ready one"
        else:
            why = detail or reason
        return (f"handshake-{reason}", f"{count} stream handshake(s) reached /twilio-media and were refused ({reason}): {why}")
    if stripped:
        return (
            "upgrade-stripped",
            f"{stripped} request(s) reached /twilio-media without 'Upgrade: websocket' (or 'Connection: upgrade'): a "
            "proxy in front of the daemon strips the upgrade headers. nginx, in the location for /twilio-media: "
            + NGINX_LINES.format(upstream=details.get(NO_UPGRADE) or "http://APP_HOST:APP_PORT"),
        )
    if seen.get(CLOSED_BEFORE_START):
        return (
            "closed-before-start",
            f"{seen[CLOSED_BEFORE_START]} stream(s) opened and closed before Twilio's start: something between Twilio "
            "and the daemon cuts the WebSocket (a proxy timeout, an idle cut), or the peer is not Twilio",
        )
    if not seen.get(REQUEST):
        refused = [p.text for p in check_url(stream_url, STREAM) if p.fatal]
        if refused:  # the stream URL itself is one Twilio will not or cannot open
            return (
                "nothing-arrived",
                f"nothing reached /twilio-media, and the stream URL given to Twilio, {stream_url}, cannot work: "
                + "; ".join(refused)
                + ". Set --public-url https://PUBLIC_HOST (the host Twilio reaches, TLS on 443)",
            )
        return (
            "nothing-arrived",
            f"nothing reached /twilio-media: Twilio could not open wss://{host}/...: check that {host} resolves "
            "publicly, serves a certificate from a public CA on port 443, and that the edge (load balancer, proxy, "
            "platform router) forwards /twilio-media to this daemon",
        )
    return (
        "streams-lost",
        f"/twilio-media saw {seen_text(seen)}, but not these calls' streams: some streams may go to another instance",
    )


class StreamWatch:
    """Expected streams, their lapses, and the episodes they make."""

    def __init__(self, wait: float, streak: int = STREAK, window: int = WINDOW):
        self.wait = wait
        self.streak = streak
        self.pending: OrderedDict[str, Expected] = OrderedDict()  # answered, soonest to lapse first
        self.seen: Counter = Counter()  # running totals of what /twilio-media saw
        self.details: dict[str, str] = {}  # kind -> the last detail (a refusal's message)
        self.missing_by_tenant: Counter = Counter()
        self.answered_total = 0
        self.outcomes: deque[bool] = deque(maxlen=window)  # True: the stream came
        self.run_missing = 0  # missing in a row
        self.episode_from: Counter | None = None  # seen totals when the first missing call of the run was answered
        self.episode_url = ""
        self.in_episode = False

    # What happened.

    def answered(self, call_sid: str | None, tenant: str | None, stream_url: str, now: float) -> None:
        self.answered_total += 1
        if not call_sid:
            return  # nothing can claim it: not Twilio
        call_sid = call_sid[:MAX_SID]
        self.pending.pop(call_sid, None)
        self.pending[call_sid] = Expected(call_sid, tenant, stream_url, now, Counter(self.seen))
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)

    def saw(self, kind: str, reason: str | None = None, detail: str | None = None) -> None:
        key = f"{kind}:{reason}" if reason else kind
        self.seen[key] += 1
        if reason:
            self.seen[kind] += 1
        if detail:
            self.details[key] = detail

    def started(self, call_sid: str | None) -> list[Event]:
        """``call_sid``'s stream started (here, or on another worker): it was not missing."""
        expected = self.pending.pop(call_sid[:MAX_SID], None) if call_sid else None
        if expected is None:
            return []
        self.outcomes.append(True)
        self.run_missing = 0
        self.episode_from = None
        if not self.in_episode:
            return []
        self.in_episode = False
        return [
            Event(
                "service.streams_arriving",
                "info",
                {"callSid": expected.call_sid},
            )
        ]

    # What lapsed.

    def next_due(self) -> float | None:
        return next(iter(self.pending.values())).answered_at + self.wait if self.pending else None

    def due(self, now: float) -> list[Event]:
        events = []
        while self.pending:
            expected = next(iter(self.pending.values()))
            if expected.answered_at + self.wait > now:
                break
            self.pending.popitem(last=False)
            events += self._missing(expected, now)
        return events

    def _missing(self, expected: Expected, now: float) -> list[Event]:
        meanwhile = self.seen - expected.seen_before
        self.missing_by_tenant[expected.tenant or "none"] += 1
        events = [
            Event(
                "call.stream_missing",
                "warn",
                {
                    "callSid": expected.call_sid,
                    "stream_url": expected.stream_url,
                    "waited": round(now - expected.answered_at, 1),
                    "seen": seen_text(meanwhile),
                    "tenant": expected.tenant or "-",
                },
            )
        ]
        self.outcomes.append(False)
        self.run_missing += 1
        if self.episode_from is None:
            self.episode_from = expected.seen_before
            self.episode_url = expected.stream_url
        if not self.in_episode and self._episode():
            self.in_episode = True
            in_episode = self.seen - self.episode_from
            code, text = layer(in_episode, self.episode_url, self.details)
            missing = sum(1 for came in self.outcomes if not came)
            events.append(
                Event(
                    "service.streams_not_arriving",
                    "error",
                    {
                        "layer": code,
                        "missing": missing,
                        "of": len(self.outcomes),
                        "seen": seen_text(in_episode),
                        "stream_url": self.episode_url,
                        "explanation": text,
                        "probe": probe_command(self.episode_url),
                    },
                )
            )
        return events

    def _episode(self) -> bool:
        if self.run_missing >= self.streak:
            return True
        missing = sum(1 for came in self.outcomes if not came)
        return len(self.outcomes) >= MIN_IN_WINDOW and missing * 2 > len(self.outcomes)

    # The funnel, for /metrics.

    def funnel(self) -> dict[str, int]:
        return {
            "answered": self.answered_total,
            "requested": self.seen.get(REQUEST, 0),
            "upgraded": self.seen.get(ACCEPTED, 0),
            "started": self.seen.get(STARTED, 0),
            "missing": sum(self.missing_by_tenant.values()),
        }
