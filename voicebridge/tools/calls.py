"""``voicebridge calls``: the call-control API from a shell (list the fleet's calls, hang one up, clear, mark, play).

Any machine of the fleet answers for all of them (voicebridge/fleet/control.py). The token comes
from ``--token-file`` or ``VOICEBRIDGE_CONTROL_TOKEN``, never from a flag (it would show in ``ps``).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from urllib.parse import quote, urlencode

TOKEN_VARIABLE = "VOICEBRIDGE_CONTROL_TOKEN"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["list", "hangup", "clear", "mark", "play"], help="what to do")
    parser.add_argument("call_sid", nargs="?", help="the call (all but list)")
    parser.add_argument("arg", nargs="?", help="mark: its name; play: a WAV (mono 16-bit 8 kHz) or .ulaw file")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="any machine of the fleet (default %(default)s)")
    parser.add_argument("--token-file", help=f"file holding the control token (else {TOKEN_VARIABLE})")
    parser.add_argument("--mark", help="play: a mark sent after the audio, which Twilio echoes once it has played")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser.add_argument("--timeout", type=float, default=10, help="seconds to wait for the answer (default %(default)s)")


def read_token(path: str | None) -> str:
    if path:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    else:
        token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise ValueError(f"no control token: give --token-file FILE or set {TOKEN_VARIABLE}")
    return token


def build_request(args, token: str) -> urllib.request.Request:
    base = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    if args.action == "list":
        return urllib.request.Request(f"{base}/calls", headers=headers)
    if not args.call_sid:
        raise ValueError(f"{args.action} needs a CallSid")
    url = f"{base}/calls/{quote(args.call_sid, safe='')}/{args.action}"
    body = b""
    if args.action == "mark":
        if not args.arg:
            raise ValueError("mark needs a name: voicebridge calls mark CALLSID NAME")
        url += "?" + urlencode({"name": args.arg})
    elif args.action == "play":
        if not args.arg:
            raise ValueError("play needs a file: voicebridge calls play CALLSID FILE")
        with open(args.arg, "rb") as f:
            body = f.read()
        headers["Content-Type"] = "audio/wav" if body[:4] == b"RIFF" else "audio/basic"
        if args.mark:
            url += "?" + urlencode({"mark": args.mark})
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def show(action: str, answer: dict) -> str:
    if action != "list":
        return " ".join(f"{k}={v}" for k, v in answer.items() if v is not None)
    calls = answer.get("calls", [])
    lines = [f"{len(calls)} call(s) ({answer.get('source')})" + (f"; {answer['warning']}" if answer.get("warning") else "")]
    for c in calls:
        tenant = c.get("tenant") or "-"
        lines.append(f"  {c['callSid']:<36} {tenant:<16} {c.get('state'):<9} {c.get('seconds'):>8}s  {c.get('machine')}")
    return "\n".join(lines)


def run(args) -> int:
    try:
        request = build_request(args, read_token(args.token_file))
    except (ValueError, OSError) as e:
        print(f"voicebridge calls: {e}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read() or b"{}").get("error", e.reason)
        except ValueError:
            message = e.reason
        print(f"voicebridge calls: {e.code}: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"voicebridge calls: {args.url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else show(args.action, answer))
    return 0
