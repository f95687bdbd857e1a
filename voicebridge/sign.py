"""``voicebridge sign URL [NAME=VALUE ...]``: the X-Twilio-Signature Twilio would send.

For trying a deployment by hand with curl, with the token from TWILIO_AUTH_TOKEN.
"""

from __future__ import annotations

import os
import sys

from voicebridge.signatures import SignatureChecker


def add_arguments(parser) -> None:
    parser.add_argument("url", help="the full URL Twilio requests, e.g. https://voice.example.com/voice?businessId=b1")
    parser.add_argument("params", nargs="*", metavar="NAME=VALUE", help="POST parameters (none for a stream handshake)")


def run(args) -> int:
    token = os.environ.get("TWILIO_AUTH_TOKEN", "").strip()
    if not token:
        print("voicebridge sign: set TWILIO_AUTH_TOKEN to the token to sign with", file=sys.stderr)
        return 2
    pairs = []
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"voicebridge sign: {item!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        pairs.append((name, value))
    print(SignatureChecker(token).sign(args.url, pairs))
    return 0
