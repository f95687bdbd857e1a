"""The per-frame fast path in front of Twisted and Autobahn, and the frame codec it shares with the load tester."""
