"""The fleet's shared ledger on Redis: key names, the Lua scripts, and what their answers mean.

Pure: no I/O. ``voicebridge/fleet/leases.py`` runs these scripts through ``client.Redis``.

Every slot is a member of one sorted set (``{fleet}:slots``) whose score is a *deadline* on
Redis's own clock (``TIME`` inside the script): a reservation's 30 s, or a started call's lease
(``--fleet-lease``, 15 s), which the machine holding the call pushes forward every lease/3.
Calls with a tenant are also in ``{fleet}:tenant:ID`` with the same deadline, and what is known
of each call (tenant, machine, state, since) is a JSON field of ``{fleet}:calls``.

Each script drops the lapsed slots before it counts, so a machine that dies (kill -9, power)
has its slots freed by Redis within one lease, whatever any other machine's clock says, and no
survivor ever decides another machine is dead. Counting and taking a slot happen in one script,
which Redis runs atomically: a burst of webhooks on many machines never takes more slots than
there are. Keys share the hash tag ``{fleet}``, so all of them live in one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from voicebridge.twilio.messages import too_deep

NO_LIMIT = -1
PRUNE_BATCH = 500  # lapsed slots one script drops at most (the next one drops more): bounds its time


@dataclass(frozen=True)
class Keys:
    """Key and channel names for one fleet (``name``: several fleets may share one Redis)."""

    name: str = "voicebridge"

    @property
    def prefix(self) -> str:
        return "{" + self.name + "}"

    @property
    def slots(self) -> str:
        return f"{self.prefix}:slots"

    @property
    def calls(self) -> str:
        return f"{self.prefix}:calls"

    def tenant(self, tenant_id: str | None) -> str:
        """A call without a tenant uses the slots key here (KEYS[3] must name a key; the script ignores it)."""
        return f"{self.prefix}:tenant:{tenant_id}" if tenant_id else self.slots

    def machine(self, machine: str) -> str:
        """The pub/sub channel a machine listens on: commands for its calls, replies, claims of its reservations."""
        return f"{self.prefix}:m:{machine}"


_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function tenant_key(tenant)
  return ARGV[1] .. ':tenant:' .. tenant
end
-- Drop lapsed slots: from the fleet set, their tenant's set, and the calls hash.
local function prune(now)
  local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, %(batch)d)
  for _, sid in ipairs(lapsed) do
    local raw = redis.call('HGET', KEYS[2], sid)
    if raw then
      local info = cjson.decode(raw)
      if info.t and info.t ~= '' then
        redis.call('ZREM', tenant_key(info.t), sid)
      end
      redis.call('HDEL', KEYS[2], sid)
    end
    redis.call('ZREM', KEYS[1], sid)
  end
end
local function count_tenant(tenant, now)
  if tenant == '' then return 0 end
  redis.call('ZREMRANGEBYSCORE', tenant_key(tenant), '-inf', now)
  return redis.call('ZCARD', tenant_key(tenant))
end
-- Whether one more slot fits: nil, or which limit is reached.
local function over(total, tcount, fleet_limit, tenant_limit, tenant)
  if fleet_limit >= 0 and total >= fleet_limit then return 'fleet' end
  if tenant ~= '' and tenant_limit >= 0 and tcount >= tenant_limit then return 'tenant' end
  return nil
end
local function take(sid, tenant, deadline, info)
  redis.call('ZADD', KEYS[1], deadline, sid)
  if tenant ~= '' then redis.call('ZADD', tenant_key(tenant), deadline, sid) end
  redis.call('HSET', KEYS[2], sid, cjson.encode(info))
end
""" % {"batch": PRUNE_BATCH}

# KEYS: slots, calls, tenant. ARGV: prefix, sid, tenant, fleet limit, tenant limit, hold ms, machine.
# -> {verdict, fleet count, tenant count}; verdict 'ok', 'held' (Twilio asked again), 'fleet', 'tenant'.
RESERVE = (
    _COMMON
    + """
local now = now_ms()
prune(now)
local sid, tenant = ARGV[2], ARGV[3]
local fleet_limit, tenant_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local total = redis.call('ZCARD', KEYS[1])
local tcount = count_tenant(tenant, now)
if redis.call('ZSCORE', KEYS[1], sid) then
  return {'held', total, tcount}
end
local verdict = over(total, tcount, fleet_limit, tenant_limit, tenant)
if verdict then return {verdict, total, tcount} end
take(sid, tenant, now + tonumber(ARGV[6]), {t = tenant, m = ARGV[7], s = 'reserved', at = now, by = ARGV[7]})
if tenant ~= '' then tcount = tcount + 1 end
return {'ok', total + 1, tcount}
"""
)

# KEYS: slots, calls, tenant. ARGV: prefix, sid, tenant, fleet limit, tenant limit, lease ms, machine.
# -> {verdict, how}: 'ok' with 'reserved' (took its reservation) or 'new' (none was held: a new slot
# within the limits); else 'fleet' or 'tenant'. The machine that reserved it hears of the claim.
CLAIM = (
    _COMMON
    + """
local now = now_ms()
prune(now)
local sid, tenant, machine = ARGV[2], ARGV[3], ARGV[7]
local deadline = now + tonumber(ARGV[6])
if redis.call('ZSCORE', KEYS[1], sid) then
  local raw = redis.call('HGET', KEYS[2], sid)
  local info = raw and cjson.decode(raw) or {}
  if info.t and info.t ~= '' and info.t ~= tenant then
    redis.call('ZREM', tenant_key(info.t), sid)
  end
  local by = info.by or machine
  take(sid, tenant, deadline, {t = tenant, m = machine, s = 'started', at = now, by = by})
  if by ~= machine then
    redis.call('PUBLISH', ARGV[1] .. ':m:' .. by, cjson.encode({op = 'claimed', sid = sid, by = machine}))
  end
  return {'ok', 'reserved'}
end
local total = redis.call('ZCARD', KEYS[1])
local tcount = count_tenant(tenant, now)
local verdict = over(total, tcount, tonumber(ARGV[4]), tonumber(ARGV[5]), tenant)
if verdict then return {verdict, 'new'} end
take(sid, tenant, deadline, {t = tenant, m = machine, s = 'started', at = now, by = machine})
return {'ok', 'new'}
"""
)

# KEYS: slots, calls. ARGV: prefix, machine, sid... -> how many were released.
# Only the machine holding a call releases it (a stale release from elsewhere changes nothing).
RELEASE = (
    _COMMON
    + """
local released = 0
for i = 3, #ARGV do
  local sid = ARGV[i]
  local raw = redis.call('HGET', KEYS[2], sid)
  if raw then
    local info = cjson.decode(raw)
    if info.m == ARGV[2] then
      if info.t and info.t ~= '' then redis.call('ZREM', tenant_key(info.t), sid) end
      redis.call('HDEL', KEYS[2], sid)
      redis.call('ZREM', KEYS[1], sid)
      released = released + 1
    end
  end
end
return released
"""
)

# KEYS: slots, calls. ARGV: prefix, machine, lease ms, number of tenants N, N tenant ids, then
# (sid, tenant, kind, ms) for each call: kind 's' a started call held here (ms: since it started),
# 'r' a reservation made here (ms: time left). A started call gets a new deadline, and is put back
# if Redis lost it (a restart) or still holds it as another machine's reservation (its claim missed
# Redis: that machine hears of the claim); a reservation only comes back if the slot is gone, and
# one whose call started on another machine meanwhile is told so (a 'claimed' on its own channel).
# -> {put back, fleet count, count of each tenant}.
RENEW = (
    _COMMON
    + """
local now = now_ms()
prune(now)
local machine, lease = ARGV[2], tonumber(ARGV[3])
local ntenants = tonumber(ARGV[4])
local back = 0
local i = 5 + ntenants
while i + 3 <= #ARGV do
  local sid, tenant, kind, ms = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  if kind == 's' then
    local raw = redis.call('HGET', KEYS[2], sid)
    local info = raw and cjson.decode(raw) or nil
    if not info or info.m ~= machine or info.s ~= 'started' then
      -- Lost (a restart), or still the reservation of the machine that answered: the claim at
      -- start missed Redis. The call is started here; that machine hears it, as CLAIM tells it.
      back = back + 1
      local by = (info and info.by) or machine
      if info and info.t and info.t ~= '' and info.t ~= tenant then
        redis.call('ZREM', tenant_key(info.t), sid)
      end
      redis.call('HSET', KEYS[2], sid, cjson.encode({t = tenant, m = machine, s = 'started', at = now - ms, by = by}))
      if by ~= machine then
        redis.call('PUBLISH', ARGV[1] .. ':m:' .. by, cjson.encode({op = 'claimed', sid = sid, by = machine}))
      end
    end
    redis.call('ZADD', KEYS[1], now + lease, sid)
    if tenant ~= '' then redis.call('ZADD', tenant_key(tenant), now + lease, sid) end
  elseif not redis.call('ZSCORE', KEYS[1], sid) then
    back = back + 1
    take(sid, tenant, now + ms, {t = tenant, m = machine, s = 'reserved', at = now, by = machine})
  else
    local raw = redis.call('HGET', KEYS[2], sid)
    local info = raw and cjson.decode(raw) or {}
    if info.s == 'started' and info.m ~= machine then
      -- Started elsewhere while this machine could not hear it (Redis was away): it hears it now.
      redis.call('PUBLISH', ARGV[1] .. ':m:' .. machine, cjson.encode({op = 'claimed', sid = sid, by = info.m}))
    end
  end
  i = i + 4
end
local counts = {back, redis.call('ZCARD', KEYS[1])}
for j = 1, ntenants do
  table.insert(counts, count_tenant(ARGV[4 + j], now))
end
return counts
"""
)

# KEYS: slots, calls. ARGV: prefix, limit. -> {now ms, sid, info json, sid, info json, ...}, oldest first.
LIST = (
    _COMMON
    + """
local now = now_ms()
prune(now)
local sids = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {now}
for _, sid in ipairs(sids) do
  local raw = redis.call('HGET', KEYS[2], sid)
  if raw then
    table.insert(out, sid)
    table.insert(out, raw)
  end
end
return out
"""
)


def sha1(script: str) -> str:
    return hashlib.sha1(script.encode("utf-8")).hexdigest()


def limit_arg(limit: int | None) -> int:
    return NO_LIMIT if limit is None else limit


def reserve_call(keys: Keys, sid: str, tenant_id: str | None, fleet_limit, tenant_limit, hold_ms: int, machine: str):
    """(script, KEYS, ARGV) for a webhook's reservation."""
    return (
        RESERVE,
        [keys.slots, keys.calls, keys.tenant(tenant_id)],
        [keys.prefix, sid, tenant_id or "", limit_arg(fleet_limit), limit_arg(tenant_limit), hold_ms, machine],
    )


def claim_call(keys: Keys, sid: str, tenant_id: str | None, fleet_limit, tenant_limit, lease_ms: int, machine: str):
    """(script, KEYS, ARGV) for a ``start`` taking its slot."""
    return (
        CLAIM,
        [keys.slots, keys.calls, keys.tenant(tenant_id)],
        [keys.prefix, sid, tenant_id or "", limit_arg(fleet_limit), limit_arg(tenant_limit), lease_ms, machine],
    )


def release_call(keys: Keys, machine: str, sids):
    return RELEASE, [keys.slots, keys.calls], [keys.prefix, machine, *sids]


def renew_call(keys: Keys, machine: str, lease_ms: int, tenants, started, reserved):
    """``started``: (sid, tenant id, ms since start); ``reserved``: (sid, tenant id, ms left)."""
    tenants = list(tenants)
    args = [keys.prefix, machine, lease_ms, len(tenants), *tenants]
    for sid, tenant_id, ms in started:
        args += [sid, tenant_id or "", "s", max(int(ms), 0)]
    for sid, tenant_id, ms in reserved:
        args += [sid, tenant_id or "", "r", max(int(ms), 1)]
    return RENEW, [keys.slots, keys.calls], args


def list_call(keys: Keys, limit: int):
    return LIST, [keys.slots, keys.calls], [keys.prefix, limit]


@dataclass(frozen=True)
class Verdict:
    """A reservation's or a claim's answer: ``ok``, else which limit (``fleet`` or ``tenant``) is reached."""

    ok: bool
    limit: str | None = None
    fleet_count: int | None = None
    tenant_count: int | None = None
    how: str | None = None  # a claim: 'reserved' (took its reservation) or 'new'


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_reserve(reply) -> Verdict:
    verdict, total, tcount = _text(reply[0]), int(reply[1]), int(reply[2])
    if verdict in ("ok", "held"):
        return Verdict(True, None, total, tcount, verdict)
    return Verdict(False, verdict, total, tcount)


def parse_claim(reply) -> Verdict:
    verdict, how = _text(reply[0]), _text(reply[1])
    return Verdict(verdict == "ok", None if verdict == "ok" else verdict, how=how)


@dataclass(frozen=True)
class Counts:
    put_back: int
    fleet: int
    tenants: dict


def parse_renew(reply, tenants) -> Counts:
    values = [int(v) for v in reply]
    return Counts(values[0], values[1], dict(zip(list(tenants), values[2:], strict=True)))


@dataclass(frozen=True)
class FleetCall:
    call_sid: str
    tenant: str | None
    machine: str
    state: str  # 'reserved' or 'started'
    seconds: float  # since it was reserved or started, on Redis's clock
    answered_by: str | None = None


def parse_list(reply) -> list[FleetCall]:
    try:
        now = int(reply[0])
    except (ValueError, TypeError, IndexError, KeyError):
        return []  # not the script's answer
    calls = []
    for i in range(1, len(reply) - 1, 2):
        try:
            info = json.loads(_text(reply[i + 1]))
            if type(info) is not dict:
                continue
            calls.append(
                FleetCall(
                    _text(reply[i]),
                    info.get("t") or None,
                    str(info.get("m", "")),
                    str(info.get("s", "")),
                    max(now - int(info.get("at", now)), 0) / 1000,
                    info.get("by"),
                )
            )
        except (ValueError, TypeError, AttributeError, RecursionError):
            continue  # not ours: a field another version wrote
    return calls


def limit_message(limit: str, fleet_limit, tenant_id, tenant_limit) -> str:
    if limit == "fleet":
        return f"the fleet's limit of {fleet_limit} calls is reached (--fleet-max-calls)"
    return f"tenant {tenant_id}'s limit of {tenant_limit} calls is reached across the fleet (max_calls)"


# Messages on a machine's channel (``Keys.machine``): whatever arrives there is a peer's input, and
# anyone who can PUBLISH on the fleet's Redis can send anything. ``parse_message`` is the one gate:
# a message it returns has the fields its ``op`` needs, each of the right type and size; anything
# else raises ``BadMessage`` (never another error), and the machine drops it.

MAX_MESSAGE = 256 * 1024  # characters: a relayed ``play`` carries its audio (a 64 KiB body) in base64
MESSAGE_DEPTH = 4  # containers below the message itself (a request's args, a reply's result: 1)
OPS = frozenset({"claimed", "control", "control-reply"})
MAX_NAME = 200  # a machine name, a request id, a channel
MAX_FIELD = 100  # an action, an argument's name, a reply's error is cut to MAX_ERROR
MAX_ERROR = 500
MAX_ARGS = 20
_SID = re.compile(r"[A-Za-z0-9]{1,64}")  # a Twilio SID: two letters and 32 hex digits, or any short token like it
_NAME = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_NAME)  # printable ASCII, no space: host:pid, host:pid/7, {fleet}:m:...


class BadMessage(ValueError):
    """Not a message of the fleet's. ``reason``: a short fixed key (for rate-limited warnings); ``reply_id``:
    a ``control-reply`` whose request is known but whose answer is malformed (its request fails with 502)."""

    def __init__(self, reason: str, detail: str = "", reply_id: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.reply_id = reply_id


def is_sid(value) -> bool:
    return type(value) is str and _SID.fullmatch(value) is not None


def _is_name(value) -> bool:
    return type(value) is str and _NAME.fullmatch(value) is not None


def _is_text(value, limit: int) -> bool:
    """A string of at most ``limit`` characters that encodes (no lone surrogate)."""
    if type(value) is not str or len(value) > limit:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_message(raw, keys: Keys) -> dict:
    """A message heard on a machine's channel -> a dict checked for its ``op``; raises ``BadMessage`` only.

    ``claimed``: ``sid`` (a SID), ``by`` (a machine name, optional). ``control``: ``id``, ``sid``,
    ``action``, ``args`` (names to strings), ``reply`` (a machine channel of this fleet).
    ``control-reply``: ``id``, ``status`` (an int, 100 to 599), ``result`` (an object) or ``error``
    (a string; cut to ``MAX_ERROR``).
    """
    if not isinstance(raw, (str, bytes, bytearray)):
        raise BadMessage("not-text", type(raw).__name__)
    if len(raw) > MAX_MESSAGE:
        raise BadMessage("too-long", f"{len(raw)} characters, at most {MAX_MESSAGE}")
    try:
        message = json.loads(raw)
    except RecursionError:
        raise BadMessage("too-deep", "nested past what the parser takes") from None
    except (ValueError, TypeError):  # UnicodeDecodeError, and an int of too many digits, are ValueErrors
        raise BadMessage("not-json") from None
    if type(message) is not dict:
        raise BadMessage("not-object", type(message).__name__)
    if too_deep(message, MESSAGE_DEPTH):
        raise BadMessage("too-deep", f"more than {MESSAGE_DEPTH} levels")
    op = message.get("op")
    if type(op) is not str or op not in OPS:
        raise BadMessage("bad-op", _shown(op))
    if op == "claimed":
        return _claimed(message)
    if op == "control":
        return _control(message, keys)
    return _control_reply(message)


def _shown(value, limit: int = 60) -> str:
    """A short, bounded description of a bad value (the warning prints it through ``printable``)."""
    if type(value) is str:
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if type(value) in (int, float, bool) or value is None:
        text = repr(value) if type(value) is not int or abs(value) < 10**18 else "a large number"
        return text[:limit]
    return f"a {type(value).__name__}"


def _claimed(message: dict) -> dict:
    sid, by = message.get("sid"), message.get("by")
    if not is_sid(sid):
        raise BadMessage("bad-sid", _shown(sid))
    if by is not None and not _is_name(by):
        raise BadMessage("bad-machine", _shown(by))
    return {"op": "claimed", "sid": sid, "by": by}


def _control(message: dict, keys: Keys) -> dict:
    request_id, sid, action = message.get("id"), message.get("sid"), message.get("action")
    args, reply = message.get("args", {}), message.get("reply")
    if not _is_name(request_id):
        raise BadMessage("bad-id", _shown(request_id))
    if not is_sid(sid):
        raise BadMessage("bad-sid", _shown(sid))
    if not _is_text(action, MAX_FIELD) or not action:
        raise BadMessage("bad-action", _shown(action))
    if not _is_name(reply) or not reply.startswith(keys.prefix + ":m:"):
        raise BadMessage("bad-reply-channel", _shown(reply))
    if type(args) is not dict or len(args) > MAX_ARGS:
        raise BadMessage("bad-args", _shown(args))
    for name, value in args.items():
        if not _is_text(name, MAX_FIELD) or not _is_text(value, MAX_MESSAGE):
            raise BadMessage("bad-args", f"{_shown(name)}: {_shown(value)}")
    return {"op": "control", "id": request_id, "sid": sid, "action": action, "args": dict(args), "reply": reply}


def _control_reply(message: dict) -> dict:
    request_id = message.get("id")
    if not _is_name(request_id):
        raise BadMessage("bad-id", _shown(request_id))
    status, result, error = message.get("status"), message.get("result", {}), message.get("error", "failed")
    if type(status) is not int or not 100 <= status <= 599:
        raise BadMessage("bad-status", _shown(status), reply_id=request_id)
    if type(result) is not dict:
        raise BadMessage("bad-result", _shown(result), reply_id=request_id)
    if type(error) is not str:
        raise BadMessage("bad-error", _shown(error), reply_id=request_id)
    if not _is_text(error, len(error)):
        error = error.encode("utf-8", "replace").decode("utf-8")
    if len(error) > MAX_ERROR:
        error = error[:MAX_ERROR] + "..."
    return {"op": "control-reply", "id": request_id, "status": status, "result": result, "error": error}
