"""Run ``twist`` with the provider link on Autobahn's general client frame path (the lean path off), for comparison.

    python benchmarks/autobahn_client_path.py voicebridge --handler openai-realtime ...

What ``benchmarks/realtime.py --handlers ...,openai-realtime-autobahn`` runs: the same daemon, the
same handler, only ``voicebridge.net.leanclient``'s fast frames switched off, so the figure shows
what that path saves.
"""

import sys

from voicebridge.net import leanclient


def _autobahn_only(self):
    self._masks = leanclient.MaskPool()
    self._fast_in = False
    self._fast_limit_out = -1
    super(leanclient.LeanClientFrames, self)._onOpen()


leanclient.LeanClientFrames._onOpen = _autobahn_only

if __name__ == "__main__":
    from twisted.application.twist._twist import Twist

    sys.argv[0] = "twist"
    Twist.main(sys.argv)
