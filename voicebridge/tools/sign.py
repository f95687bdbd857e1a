"""``voicebridge sign URL [NAME=VALUE ...]``: the X-Twilio-Signature Twilio would send.

For trying a deployment by hand with curl. The token comes from ``--auth-token-file`` or
``TWILIO_AUTH_TOKEN``, read as the daemon reads it.
"""

from __future__ import annotations

import sys

from voicebridge.cli import name_value_pairs
from voicebridge.config.file import ConfigError, read_auth_token
from voicebridge.twilio.signatures import SignatureChecker


def add_arguments(parser) -> None:
    parser.add_argument("url", help="the full URL Twilio requests, e.g. https://voice.example.com/voice?businessId=b1")
    parser.add_argument("params", nargs="*", metavar="NAME=VALUE", help="POST parameters (none for a stream handshake)")
    parser.add_argument("--auth-token-file", metavar="FILE", help="read the auth token from a file (else TWILIO_AUTH_TOKEN)")


def run(args) -> int:
    try:
        token = read_auth_token(args.auth_token_file)
        pairs = name_value_pairs(args.params)
    except (ConfigError, ValueError) as e:
        print(f"voicebridge sign: {e}", file=sys.stderr)
        return 2
    if token is None:
        print("voicebridge sign: set TWILIO_AUTH_TOKEN or --auth-token-file to the token to sign with", file=sys.stderr)
        return 2
    print(SignatureChecker(token).sign(args.url, pairs))
    return 0
