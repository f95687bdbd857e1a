"""The WebSocket close codes voicebridge uses, and how long a close may take: shared by the call, the
stream protocol and the drain, so none of them imports another for a number."""

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

# How long the WebSocket close handshake may take (Autobahn's closeHandshakeTimeout for the streams).
CLOSE_HANDSHAKE_TIMEOUT = 5.0

# What Autobahn closes with when a peer breaks WebSocket itself, as protocol-error reasons.
WEBSOCKET_FAILURES = {1002: "websocket-protocol", 1007: "invalid-utf8", 1009: "message-too-big"}
