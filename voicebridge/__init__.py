"""voicebridge: the daemon between Twilio and a voice application."""

__version__ = "0.1.0"
