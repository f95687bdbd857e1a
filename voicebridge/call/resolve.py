"""Which handler each call gets, decided once at start-up from the settings: pure, no reactor.

``resolve_handlers`` loads and checks every handler the configuration can reach, so a mistake
stops start-up rather than a call; the registry then routes each call by its tenant.
"""

from __future__ import annotations

from voicebridge import handlers as handler_registry


def resolve_handlers(settings) -> dict:
    """Load and check every handler the configuration names, so a mistake stops start-up, not a call.

    Returns {tenant id or None: (handler name, class, options)}; raises ValueError or UnknownHandler.
    Options merge, later winning: the config's [handlers.NAME], flags, the tenant's handler_options.
    """
    config = settings.config
    for name in config.handlers:
        try:
            handler_registry.load(name)
        except handler_registry.UnknownHandler as e:
            raise handler_registry.UnknownHandler(f"[handlers.{name}]: {e}") from None
    tenants = [None, *config.tenants.values()]
    if config.default_tenant is not None:
        tenants.append(config.default_tenant)
    resolved = {}
    for tenant in tenants:
        name = (tenant.handler if tenant is not None else None) or settings.handler
        tenant_options = tenant.handler_options if tenant is not None else {}
        resolved[tenant.id if tenant is not None else None] = _resolve_handler(settings, tenant, name, tenant_options, ())
    return resolved


def _resolve_handler(settings, tenant, name: str, tenant_options: dict, outer: tuple) -> tuple:
    """One handler's (name, class, options); a handler it wraps is resolved too, into options["inner"].

    A tenant's handler_options are for its handler; options for a handler that one wraps go in a
    table named after it (``[tenants.b1.handler_options.relay]`` under ``handler = "record"``).
    """
    where = f"tenant {tenant.id}" if tenant is not None else "calls without a tenant"
    if name in outer:
        raise ValueError(f"handler {name!r} for {where} wraps itself ({' -> '.join((*outer, name))})")
    cls = handler_registry.load(name)
    known = handler_registry.available()
    nested = {k: v for k, v in tenant_options.items() if isinstance(v, dict) and k in known}
    options = {
        **settings.config.handlers.get(name, {}),
        **settings.handler_options.get(name, {}),
        **{k: v for k, v in tenant_options.items() if k not in nested},
    }
    try:
        options = cls.check_options(options)
    except ValueError as e:
        raise ValueError(f"handler {name!r} for {where}: {e}") from None
    inner = cls.inner_handler(options)
    for table in nested:
        if table != inner:
            raise ValueError(f"{where}: handler_options.{table}: the handler {name!r} does not hand calls to {table!r}")
    if inner:
        options = {**options, "inner": _resolve_handler(settings, tenant, inner, nested.get(inner, {}), (*outer, name))}
    return name, cls, options


def handlers_in_use(resolved: dict) -> set[str]:
    """Every handler name some call can reach, wrapped ones included."""
    names = set()
    for entry in resolved.values():
        while entry:
            names.add(entry[0])
            entry = entry[2].get("inner")
    return names


def close_grace(resolved: dict) -> float:
    """The longest any handler in use may take to finish once its call has closed (``Handler.close_grace``)."""
    return max((cls.close_grace(options) for _name, cls, options in resolved.values()), default=0.0)
