"""What each code means for the run at hand: the message and the fix, from the failing step's facts."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from voicebridge.tools.diagnosis.handshake import HTTPAnswer, handshake_verdict
from voicebridge.tools.diagnosis.layers import code_for
from voicebridge.tools.diagnosis.steps import FAIL, OK, STREAM, Step, find_step, role_of

NGINX_UPGRADE = """\
In the nginx location that proxies {path} (the map goes in http {{ }}):
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    location {path} {{
        proxy_pass {upstream};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Host $host;
        proxy_read_timeout 3600s;
    }}
Other proxies and platforms: turn on WebSocket support for this route and make sure the proxy
speaks HTTP/1.1 to the app; then run the probe again. (A location that sets any header of its own
no longer inherits the server's proxy_set_header lines: repeat the X-Forwarded-* ones, as above.)"""

UPSTREAM_PLACEHOLDER = "http://APP_HOST:APP_PORT"  # the probe cannot see behind the proxy


def _where(step: Step) -> str:
    return "the <Stream> url's host" if role_of(step) == STREAM else "the webhook's host"


def _ok(step, steps, local):
    warnings = list(dict.fromkeys(w for s in steps for w in s.warnings))
    media = find_step(steps, "media")
    detail = f" ({media.summary})" if media is not None and media.status == OK else ""
    if local:
        return (
            f"Every layer works for a local call{detail}. Twilio itself needs a public https:// webhook and a wss:// "
            "stream url on 443 with a trusted certificate: run the probe without --local against the public URL.",
            "Nothing to fix locally." + (" Warnings: " + "; ".join(warnings) if warnings else ""),
        )
    return (
        f"Every layer a real call needs works{detail}.",
        "Nothing to fix." + (" Warnings: " + "; ".join(warnings) if warnings else ""),
    )


def _dns(step, steps, local):
    host = step.data.get("host", "?")
    return (
        f"{host} ({_where(step)}) does not resolve: {step.data.get('reason', 'no address')}.",
        f"Create the DNS record for {host} (A/AAAA, or the CNAME your platform gives), or fix the typo in the URL. "
        "Check with: dig +short " + host,
    )


def _refused(step, steps, local):
    address = step.data.get("address", "?")
    return (
        f"{address} ({_where(step)}) refused the connection: nothing listens on that port, or a firewall rejects it.",
        "Start the server, or fix the port: the proxy's listen port, the platform's internal port "
        "(voicebridge binds $PORT, else --listen tcp:8080), the port in the URL.",
    )


def _timeout(step, steps, local):
    address = step.data.get("address", "?")
    return (
        f"No answer from {address} ({_where(step)}) within {step.data.get('timeout', '?')} s: packets are dropped "
        "(a firewall or security group) or the host is down.",
        f"Open TCP port {address.rsplit(':', 1)[-1]} to the internet (Twilio connects from its own, changing addresses) "
        "and check the server is up.",
    )


def _failed(step, steps, local):
    return (
        f"The connection to {step.data.get('address', '?')} ({_where(step)}) failed: {step.data.get('reason', 'unknown')}.",
        "Check the route to the host and that the server is up.",
    )


def _tls(kind):
    def explain(step, steps, local):
        data = step.data
        host = data.get("hostname", "?")
        others = [p for p in data.get("problems", [])[1:]]
        also = f" Also: {'; '.join(others)}." if others else ""
        message = f"TLS on {host} ({_where(step)}): {data.get('reason', kind)}.{also}"
        fixes = {
            "untrusted": "Use a certificate from a public CA (Let's Encrypt: certbot certonly -d "
            f"{host}); Twilio trusts the Mozilla and Java CA stores only. To probe a private CA on purpose, pass --cafile.",
            "incomplete-chain": "Serve the full chain. nginx: ssl_certificate /etc/letsencrypt/live/"
            f"{host}/fullchain.pem; (fullchain.pem, not cert.pem). voicebridge: --listen "
            "ssl:443:privateKey=privkey.pem:certKey=cert.pem:extraCertChain=chain.pem. Then reload.",
            "hostname-mismatch": f"Serve a certificate for {host} (certbot certonly -d {host}); if one exists, the "
            "server picked another (nginx: server_name must match, and each server block names its own ssl_certificate).",
            "expired": "Renew the certificate (certbot renew) and reload the server that terminates TLS; check the "
            "renewal timer, and that the server's clock is right.",
            "handshake-failed": "Make sure the port speaks TLS (not plain HTTP) with TLS 1.2 or newer and a certificate; "
            "a https:// URL on a port without TLS shows exactly this.",
        }
        return message, fixes[kind]

    return explain


def _no_tls(step, steps, local):
    data = step.data
    host = data.get("hostname", "?")
    return (
        f"{host} ({_where(step)}) answers plain HTTP on a port the URL says is TLS ({data.get('reason', '')}): an "
        "https:// or wss:// URL pointed at an http port.",
        "Point the URL at the port that terminates TLS (443 on the proxy or platform edge), or serve TLS on this one "
        "(voicebridge: --listen ssl:443:privateKey=privkey.pem:certKey=fullchain.pem; nginx: listen 443 ssl). For a "
        "local daemon without TLS, probe http://... with --local.",
    )


def _url_not_public(step, steps, local):
    problems = [p["text"] for p in step.data.get("problems", []) if p["fatal"] and p["kind"] == "host"]
    what = "<Stream> url" if step.layer == "stream-url" else "webhook url"
    return (
        f"The {what} {step.data.get('url', '')} cannot work for Twilio: {'; '.join(problems)}.",
        "Use the public name Twilio reaches (voicebridge: --public-url https://PUBLIC_HOST, or --trusted-proxy so the "
        "proxy's X-Forwarded-Host counts). To probe a developer's machine on purpose, pass --local.",
    )


def _not_wss(step, steps, local):
    url = step.data.get("url", "")
    return (
        f"The <Stream> url {url} is not wss://: Twilio opens Media Streams only over TLS (31922).",
        "Serve the stream over TLS (a proxy terminating https, or voicebridge --listen ssl:443:...) and answer "
        "wss://HOST/PATH. voicebridge builds the url from --public-url https://HOST; behind a TLS proxy without it, "
        "add --trusted-proxy so X-Forwarded-Proto: https counts.",
    )


def _query(step, steps, local):
    url = step.data.get("url", "")
    after = [s for s in steps if s.status == FAIL and s.name != step.name]
    later = f" (The probe also found {code_for(after[0])} at {after[0].name}, but Twilio stops here first.)" if after else ""
    return (
        f"The <Stream> url {url} carries a query string. Twilio refuses it (31920) before anything else.{later}",
        'Drop the query string and pass each value as <Parameter name="..." value="..."/> inside <Stream>; '
        "they arrive in the start message's customParameters. voicebridge does this for the webhook's own query.",
    )


def _port(step, steps, local):
    url = step.data.get("url", "")
    return (
        f"The <Stream> url {url} names a port other than 443; Twilio connects to Media Streams on 443 only.",
        "Serve wss on 443 (a proxy in front, or voicebridge --listen ssl:443:...) and drop the port from the url "
        "(voicebridge: --public-url https://HOST without a port).",
    )


def _webhook_not_found(step, steps, local):
    return (
        f"{step.data.get('method', 'POST')} {step.data.get('url', '')} answered {step.data.get('status')}: "
        "nothing serves the voice webhook at that path.",
        "Configure the number's voice webhook with the path the app serves (voicebridge: POST /voice), or route that "
        "path to the app in the proxy.",
    )


def _webhook_error(step, steps, local):
    data = step.data
    url = data.get("url", "")
    if data.get("error") == "redirects":
        return (f"The webhook {url} redirects too often: {data.get('reason')}.", _webhook_fix(data))
    if data.get("error"):
        return (f"The webhook {url} did not answer: {data.get('reason')}.", _webhook_fix(data))
    status = data.get("status")
    said = f" It said: {data['excerpt']!r}." if data.get("excerpt") else ""
    if data.get("diagnosis_header") == "development-mode":
        return (
            f"voicebridge at {url} runs in development mode (no auth token) and serves only loopback clients.",
            "Give the daemon the Twilio auth token (TWILIO_AUTH_TOKEN or --auth-token-file).",
        )
    return (f"{data.get('method', 'POST')} {url} answered {status}.{said}", _webhook_fix(data))


def _webhook_fix(data) -> str:
    status = data.get("status")
    if data.get("error") == "timeout":
        return "Twilio waits 15 s for the webhook: answer faster (do slow work after answering), and check the app is up."
    if data.get("error") == "redirects":
        return "Configure Twilio with the final URL; the redirects loop or go on too long."
    if status == 401 and data.get("credentials"):
        return (
            "The server refused the credentials in the URL (the probe sends them with HTTP Basic; Twilio also "
            "speaks Digest): check the user and password configured in Twilio."
        )
    if status == 401:
        return "The webhook wants HTTP authentication: put the credentials in the URL configured in Twilio (https://user:pass@host/...)."
    if status == 405:
        return "The URL does not take POST: Twilio POSTs the voice webhook unless the number is set to GET."
    if status and 300 <= status < 400:
        return "A redirect without a usable Location: configure Twilio with the final URL."
    if status and status >= 500:
        return "The app failed on the request: its log has the exception (voicebridge: the webhook.* lines)."
    return "Answer 200 with TwiML; Twilio treats any other status as a failed webhook."


ROUTES = ("/voice", "/twilio-media", "/connect-action")


def _base(url: str) -> str:
    """The --public-url for a webhook URL: the URL without its query and its route (/voice)."""
    parts = urlsplit(url)
    path = parts.path
    for route in ROUTES:
        if path.endswith(route):
            path = path[: -len(route)]
            break
    return urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))


def _same_url(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    default = {"https": 443, "http": 80}
    port_a, port_b = pa.port or default.get(pa.scheme), pb.port or default.get(pb.scheme)
    return (pa.scheme, (pa.hostname or "").lower(), port_a, pa.path.rstrip("/"), pa.query) == (
        pb.scheme,
        (pb.hostname or "").lower(),
        port_b,
        pb.path.rstrip("/"),
        pb.query,
    )


def signature_cause(signed: str, checked: str) -> tuple[str, str, str]:
    """(cause, message, fix) when voicebridge says which URL it checked (its 403 body) and the probe signed ``signed``.

    Causes: ``token`` (the same URL: the tokens differ), ``no-public-url-behind-tls`` (the daemon saw http://
    where Twilio uses https://), ``public-url-has-route`` (a pasted webhook URL as --public-url), and
    ``wrong-public-url`` (another host or prefix).
    """
    s, c = urlsplit(signed), urlsplit(checked)
    if _same_url(signed, checked):
        return (
            "token",
            f"voicebridge checked the signature against {checked}, the same URL the probe signed: the auth tokens differ.",
            "Give the daemon the auth token of the account that owns the number (the main account's, not a "
            "subaccount's or an API key's secret), in TWILIO_AUTH_TOKEN or the daemon's token file; and give the "
            "probe that same token.",
        )
    if c.scheme == "http" and s.scheme == "https" and (c.hostname or "").lower() == (s.hostname or "").lower():
        return (
            "no-public-url-behind-tls",
            f"voicebridge checked the signature against {checked}, but Twilio signs {signed}: the daemon runs behind "
            "a proxy that terminates TLS, and without --public-url it took the scheme from the request (http).",
            f"Start the daemon with --public-url {_base(signed)}; or let it believe the proxy's X-Forwarded-Proto: "
            "--trusted-proxy PROXY_ADDRESS, with the proxy sending proxy_set_header X-Forwarded-Proto $scheme (nginx).",
        )
    route = next((r for r in ROUTES if c.path.rstrip("/").endswith(r + s.path.rstrip("/")) and s.path.endswith(ROUTES)), None)
    if route is not None:
        return (
            "public-url-has-route",
            f"voicebridge checked the signature against {checked}, but Twilio signs {signed}: its --public-url "
            f"ends in {route}, a route of the daemon (a pasted webhook URL), so every route is looked for under it.",
            f"Give --public-url the base only: --public-url {_base(signed)} (not {_base(checked) + route}).",
        )
    return (
        "wrong-public-url",
        f"voicebridge checked the signature against {checked}, but Twilio signs {signed}, the URL configured in "
        "Twilio: the daemon's --public-url (or, without it, the Host the proxy passes) names another URL.",
        f"Start the daemon with --public-url {_base(signed)}, the base of the webhook URL configured in Twilio "
        "(nginx without it: proxy_set_header Host $host).",
    )


def _signature(step, steps, local):
    data = step.data
    url = data.get("url", "")
    if not data.get("signed"):
        return (
            f"{url} refused the probe's unsigned request with {data.get('status')}: the app checks X-Twilio-Signature.",
            "Pass the account's auth token (--auth-token or TWILIO_AUTH_TOKEN) so the probe signs like Twilio.",
        )
    if data.get("checked_url"):
        _, message, fix = signature_cause(url, data["checked_url"])
        return message, fix
    return (
        f"{url} refused the signed request with {data.get('status')}: the signature Twilio would send does not match "
        "what the app computes.",
        "Either the app holds another auth token (the main account's, not a subaccount's or an API key's), or it "
        "checks the signature against another URL: behind a proxy the app sees http:// and its internal host. "
        f"voicebridge: --public-url must be exactly the base of {url}. Other apps: validate against the public URL.",
    )


# Headers a platform's edge adds to what it answers: which platform's checks to put first.
PLATFORM_HEADERS = {
    "fly-request-id": "Fly.io",
    "rndr-id": "Render",
    "x-render-origin-server": "Render",
    "x-railway-edge": "Railway",
    "x-railway-request-id": "Railway",
    "x-railway-fallback": "Railway",
}
EDGE_HEADERS = ("server", "via", *PLATFORM_HEADERS)

PLATFORM_CHECKS = {
    "Fly.io": "Fly.io: fly.toml's [http_service] internal_port must be the port the app listens on (voicebridge: "
    "PORT or --listen tcp:PORT), the app must listen on 0.0.0.0, and `fly status` / `fly logs` show whether its "
    "machines run or crash.",
    "Render": "Render: the app must listen on 0.0.0.0:$PORT (voicebridge does when PORT is set and --listen is not "
    "given), and the service's logs show whether it started or fails its health check.",
    "Railway": "Railway: the app must listen on 0.0.0.0:$PORT (voicebridge does when PORT is set; an explicit --listen "
    "must say tcp:$PORT), and the deployment's logs show whether it runs.",
}


def platform_of(headers: dict) -> str | None:
    """The platform whose edge answered, from the headers it adds (lower-case names); None if unknown."""
    for name, platform in PLATFORM_HEADERS.items():
        if name in headers:
            return platform
    server = (headers.get("server") or "").lower() + " " + (headers.get("via") or "").lower()
    if "fly" in server:
        return "Fly.io"
    if "railway" in server:
        return "Railway"
    return None


def _upstream(step, steps, local):
    data = step.data
    if step.layer == "handshake":
        answer = (data.get("answers") or {}).get("upgrade") or {}
        status, headers, url = answer.get("status"), answer.get("headers") or {}, data.get("url", "")
    else:
        status, headers, url = data.get("status"), data.get("edge") or {}, data.get("url", "")
    server = headers.get("server")
    platform = platform_of(headers)
    by = f" ({platform}'s edge)" if platform else (f" ({server})" if server else "")
    first = PLATFORM_CHECKS[platform] + " " if platform else ""
    return (
        f"{url} answered {status} from the proxy in front of the app{by}: the proxy is up, but the app behind it did "
        "not answer (it is down, crashed, or listens on another port or address).",
        first + "Check the app is running (the platform's logs: a crash at start, a failing health check), and that "
        "it listens where the proxy sends requests: on Railway, Render and Fly.io the app must listen on $PORT "
        "(voicebridge does when PORT is set; an explicit --listen must say tcp:$PORT) and on 0.0.0.0, not 127.0.0.1 "
        "(no interface=127.0.0.1 in --listen); fly.toml's internal_port must be that port. nginx: the proxy_pass "
        "address must be where the app listens (the nginx error log says 'connect() failed ... while connecting to "
        "upstream').",
    )


def _twiml(step, steps, local):
    return (
        f"The webhook answered, but {step.data.get('reason', 'not with TwiML')}.",
        "Answer with Content-Type: text/xml and "
        '<Response><Connect><Stream url="wss://HOST/PATH"><Parameter name="..." value="..."/></Stream></Connect></Response>.',
    )


def _no_stream(step, steps, local):
    return (
        f"The TwiML opens no media stream: {step.data.get('reason', '')}.",
        'Answer <Response><Connect><Stream url="wss://HOST/PATH">...</Stream></Connect></Response> for the calls that '
        "should reach the app (voicebridge answers this unless the tenant is refused).",
    )


def _handshake(code):
    def explain(step, steps, local):
        data = step.data
        verdict = handshake_verdict(data)
        path = data.get("path", "/")
        url = data.get("url", "")
        if code == "upgrade-stripped":
            return (
                f"The WebSocket upgrade to {url} never reached the app: {verdict.reason}. A proxy in front of it "
                "(the edge, the platform's router, nginx) removed the Upgrade and Connection headers, which are "
                "hop-by-hop and dropped unless the proxy is told to pass them.",
                NGINX_UPGRADE.format(path=path, upstream=data.get("upstream") or UPSTREAM_PLACEHOLDER)
                + ("" if data.get("upstream") else "\n(APP_HOST:APP_PORT: the address your location / already proxy_passes to.)"),
            )
        if code == "stream-path-not-found":
            caveat = (
                " The probe cannot see whether upgrade headers pass here (every path answers the same with or without "
                "them): if the app does serve WebSockets at this path, a proxy dropping the upgrade looks just like "
                "this; check the app's log for the request."
                if not verdict.certain
                else ""
            )
            return (
                f"Nothing accepts WebSockets at {url}: {verdict.reason}.{caveat}",
                f"Point <Stream url> at the path where the app accepts WebSockets, or serve them at {path} "
                "(voicebridge: /twilio-media under --public-url). Check the proxy forwards the path unchanged "
                "(nginx: a proxy_pass with a URI part rewrites it).",
            )
        told = (HTTPAnswer.from_dict(data.get("answers", {}).get("upgrade")) or HTTPAnswer(None)).headers.get(
            "x-voicebridge-diagnosis"
        )
        status = (data.get("answers", {}).get("upgrade") or {}).get("status")
        fix = "Read the app's log for the refused handshake; the status says who refused it."
        if status in (401, 403) or told in ("signature-invalid", "signature-missing"):
            fix = (
                f"If the app checks X-Twilio-Signature on the handshake, it must check the wss:// url exactly as the "
                f"TwiML wrote it ({url}), with no parameters; behind a proxy that is not the url it sees "
                "(voicebridge: --public-url)."
            )
            if not data.get("signed"):
                fix += " The probe had no auth token: pass --auth-token so it signs like Twilio."
            checked = _stream_checked(data)
            if checked and data.get("signed"):
                fix = _stream_signature_fix(url, checked)
        elif told == "development-mode":
            fix = "Give the daemon the Twilio auth token (TWILIO_AUTH_TOKEN or --auth-token-file)."
        return (f"The app refused the WebSocket handshake at {url}: {verdict.reason}.", fix)

    return explain


_STREAM_CHECKED = re.compile(r"matches none of (\S+?),? ")


def _stream_checked(data) -> str | None:
    """The stream URL voicebridge checked the handshake's signature against, from its 403."""
    body = ((data.get("answers") or {}).get("upgrade") or {}).get("body") or ""
    match = _STREAM_CHECKED.search(body)
    return match.group(1) if match else None


def _stream_signature_fix(url: str, checked: str) -> str:
    if _same_url(url.replace("wss://", "https://", 1), checked.replace("wss://", "https://", 1)):
        return (
            f"voicebridge checked {checked}, the URL Twilio signs: the auth tokens differ. Give the daemon the token "
            "of the account that owns the number, and the probe the same one."
        )
    ours, theirs = urlsplit(url), urlsplit(checked)
    if (ours.hostname or "") != (theirs.hostname or ""):
        return (
            f"voicebridge checked the handshake's signature against {checked}, but Twilio signs {url}, the url the "
            f"TwiML gave it: the request reached the daemon with Host {theirs.hostname}. In the proxy's location for "
            f"{ours.path or '/'}, pass the public host (nginx: proxy_set_header Host $host; a location that sets its "
            f"own headers does not inherit the server's), or start the daemon with --public-url "
            f"{_base(url.replace('wss://', 'https://', 1))}."
        )
    return (
        f"voicebridge checked the handshake's signature against {checked}, but Twilio signs {url}, the url the TwiML "
        f"gave it: start the daemon with --public-url {_base(url.replace('wss://', 'https://', 1))}, or make the proxy "
        "forward the path unchanged."
    )


def _closed_early(step, steps, local):
    data = step.data
    return (
        f"The app accepted the stream and closed it after {data.get('open_seconds', 0):.1f} s, before Twilio's stop "
        f"(close code {data.get('close_code')}, reason {data.get('close_reason') or 'none given'}; "
        f"{data.get('sent', 0)} frames sent, {data.get('received', 0)} received). Twilio then leaves <Connect> and "
        "the call moves on or hangs up.",
        "Look at the app's log at that moment: an exception on the connected/start messages, a check on "
        "start.customParameters that fails, or a timeout. Keep the socket open until Twilio sends stop.",
    )


def _no_media(step, steps, local):
    data = step.data
    if data.get("expect") == "echo" and data.get("received"):
        return (
            f"The stream works, but the echo is wrong: {data.get('echoed', 0)} of {data.get('sent', 0)} frames came back "
            f"unchanged ({data.get('received', 0)} media frames received).",
            "An echo handler must send every frame back unchanged, in order; something in between drops or alters them.",
        )
    return (
        f"The stream works, but in {data.get('listen_seconds', 0):.1f} s the app sent no audio back: the caller hears silence.",
        'The app must send {"event":"media","streamSid":...,"media":{"payload":...}} (base64 mu-law, 8 kHz) on the '
        "same socket. If it only listens (transcription), run the probe with --expect none.",
    )


TEXTS = {
    "ok": _ok,
    "dns-failure": _dns,
    "connection-refused": _refused,
    "connect-timeout": _timeout,
    "connection-failed": _failed,
    "tls-untrusted": _tls("untrusted"),
    "tls-incomplete-chain": _tls("incomplete-chain"),
    "tls-hostname-mismatch": _tls("hostname-mismatch"),
    "tls-expired": _tls("expired"),
    "tls-handshake-failed": _tls("handshake-failed"),
    "url-not-public": _url_not_public,
    "webhook-not-found": _webhook_not_found,
    "webhook-error": _webhook_error,
    "signature-rejected": _signature,
    "upstream-unreachable": _upstream,
    "no-tls": _no_tls,
    "not-twiml": _twiml,
    "no-stream-in-twiml": _no_stream,
    "stream-url-not-wss": _not_wss,
    "stream-url-query-string": _query,
    "stream-url-port": _port,
    "stream-path-not-found": _handshake("stream-path-not-found"),
    "upgrade-stripped": _handshake("upgrade-stripped"),
    "handshake-rejected": _handshake("handshake-rejected"),
    "stream-closed-early": _closed_early,
    "no-media-back": _no_media,
}
