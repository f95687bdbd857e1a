"""Outbound connections voicebridge makes: WebSocket clients with verified TLS and bounded waits."""
