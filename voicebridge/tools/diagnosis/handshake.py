"""A WebSocket upgrade that did not get 101: which layer refused it, from the answers compared."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HTTPAnswer:
    """An HTTP answer (status None: no answer, with ``error`` saying why)."""

    status: int | None
    headers: dict = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    error: str | None = None
    complete: bool = True  # False when only the part of the body that came with the head is known

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "headers": self.headers,
            "body": self.body[:300].decode("utf-8", "replace"),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> HTTPAnswer | None:
        if data is None:
            return None
        return cls(data.get("status"), data.get("headers") or {}, (data.get("body") or "").encode(), data.get("error"))


def _normalised(answer: HTTPAnswer, paths: tuple[str, ...]) -> str:
    """The body with the path, numbers and ids blanked, so two error pages compare as pages."""
    text = answer.body.decode("utf-8", "replace")
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, "{path}")
    return re.sub(r"[0-9a-fA-F]{8,}|\d+", "#", " ".join(text.split()))


def _same_status(a: HTTPAnswer | None, b: HTTPAnswer | None) -> bool | None:
    if a is None or b is None or a.status is None or b.status is None:
        return None
    return a.status == b.status


def same_page(a: HTTPAnswer | None, b: HTTPAnswer | None, paths) -> bool | None:
    same = _same_status(a, b)
    if not same:
        return same
    return _normalised(a, paths) == _normalised(b, paths)


UPGRADE_HEADER_DIAGNOSES = {"upgrade-missing", "connection-upgrade-missing"}


@dataclass(frozen=True)
class HandshakeVerdict:
    code: str
    reason: str
    certain: bool = True


def classify_handshake(
    upgrade: HTTPAnswer,
    plain: HTTPAnswer | None = None,
    sibling_upgrade: HTTPAnswer | None = None,
    sibling_plain: HTTPAnswer | None = None,
    path: str = "/",
    sibling: str = "/",
) -> HandshakeVerdict:
    """Why a signed WebSocket upgrade to ``path`` did not get 101.

    ``plain`` is a GET of the same path without upgrade headers; ``sibling_*`` the same two
    requests for a path that surely does not exist. The reasoning (see the README):

    1. voicebridge names a missing upgrade itself (``X-Voicebridge-Diagnosis``): certain.
    2. The path answers a plain GET like the missing path does, and the upgrade like the missing
       path does (or like its own plain GET): nothing serves the path -> stream-path-not-found.
       Certain only when upgrades visibly reach the app elsewhere (the missing path answers an
       upgrade differently from a plain GET); otherwise a proxy that strips upgrades in front of
       an app that 404s plain GETs on its WebSocket route looks the same.
    3. The path answers plain GETs unlike the missing path (so a route exists there), but the
       upgrade gets exactly what a plain GET gets: the Upgrade header never reached the route
       -> upgrade-stripped. A 426 "Upgrade Required" to a request that carried Upgrade says the
       same.
    4. Otherwise the route saw the upgrade and refused it -> handshake-rejected.
    """
    if upgrade.status is None:
        return HandshakeVerdict("handshake-rejected", f"no HTTP answer to the upgrade: {upgrade.error or 'connection closed'}")
    told = (upgrade.headers.get("x-voicebridge-diagnosis") or "").strip()
    if told in UPGRADE_HEADER_DIAGNOSES:
        what = "Upgrade" if told == "upgrade-missing" else "Connection: upgrade"
        return HandshakeVerdict(
            "upgrade-stripped", f"voicebridge answered {upgrade.status} ({told}): the request reached it without {what}"
        )
    if told == "not-found":
        return HandshakeVerdict("stream-path-not-found", f"voicebridge answered {upgrade.status}: it does not serve {path}")
    if told:
        return HandshakeVerdict("handshake-rejected", f"voicebridge refused the handshake with {upgrade.status} ({told})")
    if upgrade.status == 101:
        return HandshakeVerdict(
            "handshake-rejected", f"the app answered 101, but not a valid WebSocket handshake: {upgrade.error}"
        )
    paths = (path, sibling)
    like_missing_upgrade = _same_status(upgrade, sibling_upgrade)
    like_missing_plain = same_page(plain, sibling_plain, paths)
    upgrade_ignored = _same_status(upgrade, plain)
    upgrades_matter_elsewhere = _same_status(sibling_upgrade, sibling_plain) is False
    wants_upgrade = upgrade.status == 426 and "sec-websocket-version" not in upgrade.headers
    if like_missing_plain is not False and (like_missing_upgrade or upgrade_ignored) and not wants_upgrade:
        if upgrades_matter_elsewhere:
            return HandshakeVerdict(
                "stream-path-not-found", f"{path} answers {upgrade.status}, exactly like a path that does not exist"
            )
        return HandshakeVerdict(
            "stream-path-not-found",
            f"{path} answers {upgrade.status} with or without upgrade headers, exactly like a path that does not exist",
            certain=False,
        )
    if upgrade_ignored and like_missing_plain is False:
        return HandshakeVerdict(
            "upgrade-stripped",
            f"{path} exists (a plain GET gets {plain.status}, a missing path {sibling_plain.status}), but the "
            f"upgrade request got the same {upgrade.status} as a plain GET: the upgrade headers never reached it",
        )
    if wants_upgrade:
        return HandshakeVerdict(
            "upgrade-stripped", f"{path} answered 426 Upgrade Required to a request that carried Upgrade: websocket"
        )
    if like_missing_upgrade and not upgrade_ignored:
        return HandshakeVerdict(
            "stream-path-not-found",
            f"the WebSocket server refuses {path} with {upgrade.status}, as it refuses a path that does not exist",
        )
    if like_missing_upgrade is None and upgrade.status in (404, 410):
        return HandshakeVerdict("stream-path-not-found", f"{path} answered {upgrade.status}", certain=False)
    return HandshakeVerdict("handshake-rejected", f"the app saw the upgrade to {path} and answered {upgrade.status}")


def handshake_verdict(data: dict) -> HandshakeVerdict:
    answers = data.get("answers", {})
    return classify_handshake(
        HTTPAnswer.from_dict(answers.get("upgrade")) or HTTPAnswer(None, error="no answer recorded"),
        HTTPAnswer.from_dict(answers.get("plain")),
        HTTPAnswer.from_dict(answers.get("sibling_upgrade")),
        HTTPAnswer.from_dict(answers.get("sibling_plain")),
        data.get("path", "/"),
        data.get("sibling", "/"),
    )
