"""Kept for handlers written against ``voicebridge.messages``: the module is now ``voicebridge.twilio.messages``."""

import sys

from voicebridge.twilio import messages

sys.modules[__name__] = messages
