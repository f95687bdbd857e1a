"""systemd's readiness protocol (sd_notify) without a dependency: one datagram to ``$NOTIFY_SOCKET``.

``Type=notify`` units learn from ``READY=1`` that the ports are bound, and from ``STOPPING=1``
that a drain began. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op. Failing to
notify never stops the daemon: it is logged once.
"""

from __future__ import annotations

import os
import socket

from twisted.logger import Logger

log = Logger(namespace="voicebridge.notify")

_warned = False


def notify_address(environ=os.environ) -> str | None:
    """The socket address from ``NOTIFY_SOCKET``: a path, or ``@name`` for the abstract namespace."""
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(*assignments: str, environ=os.environ) -> bool:
    """Send ``READY=1``, ``STOPPING=1``, ``STATUS=...`` lines; True if they were sent."""
    global _warned
    value = environ.get("NOTIFY_SOCKET", "")
    address = notify_address(environ)
    if address is None:
        if value and not _warned:
            _warned = True
            log.warn(
                "NOTIFY_SOCKET={value!r} is not a path or @abstract name; systemd is not notified",
                event_name="service.notify_failed",
                value=value,
            )
        return False
    message = "\n".join(assignments).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as e:
        if not _warned:
            _warned = True
            log.warn(
                "could not notify systemd at {address}: {error}",
                event_name="service.notify_failed",
                address=value,
                error=e.strerror or str(e),
            )
        return False
    return True
