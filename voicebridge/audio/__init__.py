"""Audio, pure: G.711 mu-law conversions (``voicebridge.audio``, as handlers import it) and a call's recording on disk."""

from voicebridge.audio.codec import *  # noqa: F401,F403  (the documented ``voicebridge.audio`` surface)
