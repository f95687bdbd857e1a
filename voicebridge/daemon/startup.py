"""Mistakes at start-up, as one line naming the flag, the value and the fix.

``--listen`` values are checked before anything binds (start-up and ``voicebridge check-config``
alike); a port that still cannot be bound (in use, privileged, an address this machine does not
have) is told the same way. Under twist and twistd a usage error prints that line and one hint,
not twist's seventy lines of usage. The checks are pure but for ``interface_exists``, which asks
the kernel.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import os
import socket

from voicebridge.tls import listen as tls

FORMS = "tcp:PORT[:interface=ADDRESS], ssl:PORT:privateKey=KEY.pem:certKey=FULLCHAIN.pem, unix:PATH, systemd:domain=INET:index=0"
TCP_KEYS = ("port", "interface", "backlog")


class ListenError(ValueError):
    pass


def interface_exists(address: str) -> bool:
    """Whether this machine has ``address`` (binding port 0 on it is refused with EADDRNOTAVAIL if not)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError as e:
            return e.errno != errno.EADDRNOTAVAIL
    return True


def check_listen(description: str, has_interface=interface_exists) -> None:
    """Raise ``ListenError`` (one line: flag, value, fix) for a ``--listen`` value start-up would fail on."""
    where = f"--listen {description!r}"
    try:
        args, kwargs = tls.split_description(description)
    except (ValueError, IndexError) as e:
        raise ListenError(f"{where} cannot be read ({e}); use one of {FORMS}") from None
    kind = (args[0] if args else "").strip().lower()
    if kind in ("tcp", "tcp6"):
        _, interface, _ = tls.tcp_fields(
            description, args, kwargs, TCP_KEYS, f"{kind}:PORT[:interface=ADDRESS][:backlog=N]", error=ListenError
        )
        if interface:
            try:
                ipaddress.ip_address(interface)
            except ValueError:
                raise ListenError(
                    f"{where}: interface {interface!r} is not an IP address; use an address of this machine "
                    "(0.0.0.0 for all of them, 127.0.0.1 for this machine only)"
                ) from None
            if not has_interface(interface):
                raise ListenError(
                    f"{where}: this machine has no address {interface} (`ip -brief address` lists them); "
                    "use 0.0.0.0 to listen on all of them"
                )
        return
    if kind in ("ssl", "systemd"):
        return  # ssl: checked by voicebridge.tls.listen.build; systemd: by the socket systemd passes
    if kind == "unix":
        path = kwargs.get("address") or (args[1] if len(args) > 1 else "")
        directory = os.path.dirname(path) or "."
        if not path:
            raise ListenError(f"{where}: no path; use unix:/run/voicebridge/voicebridge.sock")
        if not os.path.isdir(directory):
            raise ListenError(f"{where}: directory {directory} does not exist; create it or pick another path")
        return
    if kind in plugin_types():
        return  # an endpoint type a Twisted plugin serves (txtorcon's onion:, ...): Twisted checks it
    near = difflib.get_close_matches(kind, ["tcp", "tcp6", "ssl", "unix", "systemd"], n=1)
    hint = f" (did you mean {near[0]}:...?)" if near else ""
    if description.strip().isdigit():
        hint = f" (a bare port: --listen tcp:{description.strip()})"
    raise ListenError(f"{where}: an endpoint begins with its type, not {kind}:{hint}; use one of {FORMS}, e.g. --listen tcp:8080")


def plugin_types() -> set[str]:
    """Endpoint types installed Twisted plugins add (``IStreamServerEndpointStringParser.prefix``)."""
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    return {str(p.prefix).lower() for p in getPlugins(IStreamServerEndpointStringParser)}


def bind_error(description: str, error: Exception) -> str:
    """One line for a port that could not be bound (``twisted.internet.error.CannotListenError``)."""
    socket_error = getattr(error, "socketError", None) or error
    number = getattr(socket_error, "errno", None)
    port = getattr(error, "port", None)
    interface = getattr(error, "interface", "") or "0.0.0.0"
    where = f"--listen {description!r}"
    if number == errno.EADDRINUSE:
        return (
            f"{where}: port {port} on {interface} is in use by another process (`ss -ltnp 'sport = :{port}'` shows "
            "which); stop it, or pick another port"
        )
    if number == errno.EACCES:
        return (
            f"{where}: port {port} is below 1024 and needs root or CAP_NET_BIND_SERVICE; use a port of 1024 or more "
            "behind a proxy, or grant the capability (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)"
        )
    if number == errno.EADDRNOTAVAIL:
        return f"{where}: this machine has no address {interface}; use 0.0.0.0 to listen on all of them"
    return f"{where}: cannot listen: {getattr(socket_error, 'strerror', None) or socket_error}"


def usage_line(message: str, known_flags) -> str:
    """A usage error as one line, with a suggestion for a misspelt flag."""
    text = str(message)
    if text.startswith("option ") and text.endswith(" not recognized"):
        flag = text.split()[1]
        near = difflib.get_close_matches(flag, [f"--{f}" for f in known_flags], n=1)
        if near:
            text += f"; did you mean {near[0]}?"
    return text


def handler_key(config, flag: str | None, flag_options: dict, message: str) -> str | None:
    """Where an unknown handler was named (``tenants.b1.handler``, ``--handler``, ...), from the error's quoted name."""
    if message.startswith("["):
        return None  # [handlers.NAME] names itself
    quoted = message.split("'")
    name = quoted[1] if len(quoted) > 2 else None
    if name is None:
        return None
    if flag == name:
        return "--handler"
    if flag_options.get("record", {}).get("handler") == name:
        return "--record-handler"
    if getattr(config, "handler", None) == name:
        return "handler"
    tables = [(f"tenants.{t.id}", t) for t in config.tenants.values()]
    if config.default_tenant is not None:
        tables.append(("default", config.default_tenant))
    for path, tenant in tables:
        if tenant.handler == name:
            return f"{path}.handler"
        if (tenant.handler_options or {}).get("handler") == name:
            return f"{path}.handler_options.handler"
    for table, options in config.handlers.items():
        if isinstance(options, dict) and options.get("handler") == name:
            return f"handlers.{table}.handler"
    return None
