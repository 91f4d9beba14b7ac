"""Nano-HMAC-SHA256 request signatures (api-reference §2), verified more strictly than Core.

The canonical request, scope and signing key are exactly Core's, so an unchanged Nano client
signs requests nanocore accepts. On top of that: ``Nano-Date`` is required and must lie within
``skew`` seconds of the injected clock (Core accepted any time on the same calendar day, or any
time at all without the header), and a signature is let through for a write only within the
second its date names, never later while it is fresh (Core had no replay protection).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import re
from array import array
from bisect import bisect_left
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from functools import lru_cache
from urllib.parse import quote_plus, unquote_to_bytes

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from nanocore.clocks import wall_seconds

METHOD = "Nano-HMAC-SHA256"
EMPTY_PAYLOAD_HASH = hashlib.sha256(b"").hexdigest()
UNHASHED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MUTATING_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
DEFAULT_SKEW = 300.0
#: Seconds a repeat of a signature may arrive after the end of the second its date names
#: (counted from its first copy's arrival): network and queueing jitter of one client.
REPEAT_MARGIN = 1.0
#: Signatures remembered at most: 8 bytes each once their repeat window has passed (32 MiB),
#: about 100 bytes for the ~2 s before. With the default skew a signature is remembered for
#: about 301 s after its date, so this holds ~13,000 signed writes/s sustained; beyond, requests
#: that would need remembering are refused until older ones expire.
MAX_REPLAY_ENTRIES = 4_000_000


class Variant(Enum):
    """Request signatures hash the body; stream signatures leave it out (it is proxied)."""

    REQUEST = "request"
    STREAM = "stream"


class AuthError(Exception):
    """Verification failed; ``message`` names the check, never the key."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@frozen
class RequestParts:
    """What a signature covers, taken from the HTTP request by the caller.

    ``path`` is percent-decoded (Go's ``URL.Path``); ``query`` is the raw query string;
    ``headers`` maps lower-cased names to the *first* value received, and includes ``host``.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes = b""


def go_query_escape(text: str) -> str:
    """Go's ``url.QueryEscape``."""
    return quote_plus(text, safe="")


def _go_query_unescape(text: str) -> str | None:
    """Go's ``url.QueryUnescape``, or None where Go reports a malformed escape."""
    pieces = text.split("%")
    for piece in pieces[1:]:
        if len(piece) < 2 or any(c not in "0123456789abcdefABCDEF" for c in piece[:2]):
            return None
    return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", errors="replace")


#: Paths that escaping leaves alone but for their slashes (ids, names: the common case).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_.~/-]*")


@lru_cache(maxsize=4096)
def canonical_uri(path: str) -> str:
    """The path escaped twice (cached: clients call the same few paths over and over).

    A slash escapes to ``%2F``, then ``%252F``; the unreserved characters stay as they are.
    """
    if _PLAIN_PATH.fullmatch(path):
        return path.replace("/", "%252F")
    return escaped_twice(path)


def escaped_twice(path: str) -> str:
    """What Core signs for a path: Go's ``QueryEscape`` of its ``QueryEscape``."""
    return go_query_escape(go_query_escape(path))


def parse_query(raw_query: str) -> dict[str, str]:
    """The first value of every query key, parsed like Go's ``url.ParseQuery``."""
    first: dict[str, str] = {}
    if not raw_query:
        return first
    for pair in raw_query.split("&"):
        if not pair or ";" in pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        key = _go_query_unescape(raw_key)
        value = _go_query_unescape(raw_value)
        if key is None or value is None:
            continue
        first.setdefault(key, value)
    return first


def canonical_query(raw_query: str) -> str:
    """The sorted ``key=first value`` list Core signs."""
    if not raw_query:
        return ""  # most requests: nothing to parse, sort or join
    first = parse_query(raw_query)
    ordered = sorted(first, key=lambda k: k.encode("utf-8"))
    return "&".join(f"{go_query_escape(k)}={go_query_escape(first[k])}" for k in ordered)


def canonical_headers(headers: Mapping[str, str], signed_headers: str) -> str:
    lines = []
    for name in signed_headers.split(";"):
        value = headers.get(name)
        if value is not None:
            lines.append(f"{name}:{value.strip(' ')}\n")
    return "".join(lines)


def canonical_request(parts: RequestParts, signed_headers: str, variant: Variant) -> str:
    pieces = [
        canonical_uri(parts.path),
        canonical_query(parts.query),
        canonical_headers(parts.headers, signed_headers),
        signed_headers,
    ]
    if variant is Variant.REQUEST:
        if parts.method in UNHASHED_METHODS:
            pieces.append(EMPTY_PAYLOAD_HASH)
        else:
            pieces.append(hashlib.sha256(parts.body).hexdigest())
    return "\n".join(pieces)


def signing_key(api_key: str, scope: str) -> bytes:
    return hmac.digest(("nano" + api_key).encode("utf-8"), scope.encode("utf-8"), "sha256")


def string_to_sign(date: str, scope: str, canonical_hash: str) -> str:
    return f"{METHOD}\n{date}\n{scope}\n{canonical_hash}"


def signature(key: bytes, parts: RequestParts, scope: str, signed: str, variant: Variant) -> str:
    canonical_hash = hashlib.sha256(
        canonical_request(parts, signed, variant).encode("utf-8")
    ).hexdigest()
    text = string_to_sign(parts.headers.get("nano-date", ""), scope, canonical_hash)
    return hmac.digest(key, text.encode("utf-8"), "sha256").hex()


def sign(
    credential_id: str,
    api_key: str,
    parts: RequestParts,
    scope: str,
    signed_headers: str,
    variant: Variant = Variant.REQUEST,
) -> str:
    """The ``Nano-Authorization`` value a client sends for ``parts`` (tests, benchmarks)."""
    value = signature(signing_key(api_key, scope), parts, scope, signed_headers, variant)
    return (
        f"{METHOD} Credential={credential_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={value}"
    )


@frozen
class Authorization:
    """The three tokens of a ``Nano-Authorization`` header."""

    credential_id: str
    scope: str
    signed_headers: str
    signature: str


#: A header as clients write it: parsed at once, to what the checks below would give.
_WELL_FORMED = re.compile(
    METHOD + r" Credential=([^,=/ ]+)/([^,= ]*), ?SignedHeaders=([^,= ]*), ?Signature=([^,= ]*)"
)


def parse_authorization(value: str) -> Authorization:
    """Parse the header with Core's checks and messages, in Core's order (§2.3)."""
    plain = _WELL_FORMED.fullmatch(value)
    if plain is not None:
        return Authorization(*plain.groups())
    return checked_authorization(value)


def checked_authorization(value: str) -> Authorization:
    """:func:`parse_authorization`, every step written out as Core takes it."""
    if not value:
        raise AuthError("authorization required")
    if len(value) <= len(METHOD):
        raise AuthError(f"insufficent authorization: {value}")
    if value[: len(METHOD)] != METHOD:
        raise AuthError(f"invalid signature method: {value[: len(METHOD)]}")
    tokens: list[tuple[str, str]] = []
    for piece in value[len(METHOD) + 1 :].split(","):
        name, equals, token = piece.partition("=")
        if not equals:
            raise AuthError(f"invalid authorization token: {piece}")
        tokens.append((name.strip(" "), token.strip(" ")))
    if len(tokens) != 3:
        raise AuthError(f"unexpected token count {len(tokens)}/{len(tokens)}")
    for (name, _), expected, ordinal in zip(
        tokens,
        ("Credential", "SignedHeaders", "Signature"),
        ("first", "second", "third"),
        strict=True,
    ):
        if name != expected:
            raise AuthError(f"invalid {ordinal} token {name}")
    credential = tokens[0][1]
    credential_id, slash, scope = credential.partition("/")
    if not slash:
        raise AuthError(f"no API ID in credential: {credential}")
    return Authorization(credential_id, scope, tokens[1][1], tokens[2][1])


@lru_cache(maxsize=256)
def parse_date(value: str) -> float:
    """Seconds since the epoch of an RFC 3339 ``Nano-Date`` (an offset is required; cached:
    a second's requests carry one date)."""
    text = value.strip()
    if len(text) < 20 or text[10] not in "Tt":
        raise ValueError(value)
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(value)
    return moment.timestamp()


class Verifier:
    """Checks signatures against the configured credentials and the injected clock.

    Replays (docs/compatibility.md, "Replays refused"). A signature does not cover the method,
    and the portal's ``Nano-Date`` names a whole second, so a legitimate client signs
    different requests alike: ``POST`` then ``DELETE`` of one path with empty bodies, a ``GET``
    then a ``DELETE``, the same ``PUT`` twice, a retry. Every accepted signature is therefore
    remembered, with the moment until which a repeat is still the client's own: the end of the
    second its date names, shifted by how late its first copy arrived, plus
    :data:`REPEAT_MARGIN`. A repeat later than that is a replay: refused for a write, harmless
    (and accepted) for a read. So a signature seen first with a read is never let through
    later as a write. Reads need remembering only where a write could be sent to the same path
    (``writable``); the route table says where.
    """

    def __init__(
        self,
        credentials: Mapping[str, str],
        clock: IReactorTime,
        skew: float = DEFAULT_SKEW,
        key_cache_size: int = 1024,
        max_replay_entries: int = MAX_REPLAY_ENTRIES,
    ) -> None:
        self._credentials = dict(credentials)
        self._clock = clock
        self._skew = skew
        self._keys: dict[tuple[str, str], bytes] = {}
        self._key_cache_size = key_cache_size
        self._max_replay_entries = max_replay_entries
        #: The signatures remembered, by the whole second at which their dates go stale.
        self._seconds: dict[int, _Second] = {}
        #: Those seconds, earliest first; and the seconds with signatures still in their
        #: repeat window, with when to look at them again.
        self._forget_at: list[int] = []
        self._to_settle: dict[int, float] = {}
        #: No second in ``_to_settle`` is due before this moment (it may be later).
        self._settle_from = math.inf
        self._entries = 0
        #: Reads verified lately, by everything their signature covers: a portal polls the
        #: same path many times under one signature (its date names a whole second).
        self._reads: dict[tuple[object, ...], tuple[str, float]] = {}
        #: Writes dated before this moment are refused (:meth:`refuse_writes_before`).
        self._writes_from = -math.inf

    @property
    def skew(self) -> float:
        return self._skew

    @property
    def clock(self) -> IReactorTime:
        return self._clock

    def replay_entries(self) -> int:
        """How many signatures are remembered right now (bounded by the window)."""
        self._expire(wall_seconds(self._clock))
        return self._entries

    def _key(self, credential_id: str, scope: str) -> bytes:
        cached = self._keys.get((credential_id, scope))
        if cached is None:
            if len(self._keys) >= self._key_cache_size:
                self._keys.clear()
            cached = signing_key(self._credentials[credential_id], scope)
            self._keys[(credential_id, scope)] = cached
        return cached

    def verify(
        self, parts: RequestParts, variant: Variant = Variant.REQUEST, *, writable: bool = True
    ) -> str:
        """Return the credential id of a valid request, or raise :class:`AuthError`.

        ``writable``: whether a write may be sent to this path; a read's signature is
        remembered only then (a write with an empty body would carry the same signature).
        """
        write = parts.method in MUTATING_METHODS
        remembered = not (write or writable)
        if remembered:
            # A read nothing remembers for replays: the same parts verify alike, while fresh.
            read = (parts.method, parts.path, parts.query, parts.body,
                    variant is Variant.STREAM, tuple(parts.headers.items()))  # fmt: skip
            known = self._reads.get(read)
            if known is not None and abs(wall_seconds(self._clock) - known[1]) <= self._skew:
                return known[0]
        auth, signed_at = self.check_headers(parts.headers)
        now = wall_seconds(self._clock)
        expected = signature(
            self._key(auth.credential_id, auth.scope),
            parts,
            auth.scope,
            auth.signed_headers,
            variant,
        )
        if not hmac.compare_digest(expected.encode("ascii"), auth.signature.encode("utf-8")):
            raise AuthError("signature corrupted")
        if remembered:
            if len(self._reads) >= self._key_cache_size:
                self._reads.clear()
            self._reads[read] = (auth.credential_id, signed_at)
        if write and signed_at < self._writes_from:
            date = parts.headers["nano-date"]
            raise AuthError(
                f"request signed at {date}, before nanocore started without the replay memory"
                " of its previous run; sign it again"
            )
        if write or writable:
            # 8 bytes of the signature recognise a repeat: a stranger cannot aim at them without
            # the key, and a chance match among a second's signatures is ~1e-15.
            self._check_repeat(int(expected[:16], 16), signed_at, now, write)
        return auth.credential_id

    def check_headers(self, headers: Mapping[str, str]) -> tuple[Authorization, float]:
        """The checks of :meth:`verify` that come before the signature's, in Core's order
        (the header, the credential, the date and its freshness, the scope): they need no
        body, so the API can refuse a request before reading its body. Returns the parsed
        header and the moment the request was signed, or raises :class:`AuthError`."""
        auth = parse_authorization(headers.get("nano-authorization", ""))
        if auth.credential_id not in self._credentials:
            raise AuthError(f"invalid API ID: {auth.credential_id}")
        date = headers.get("nano-date")
        if not date:
            raise AuthError("Nano-Date header required")
        try:
            signed_at = parse_date(date)
        except ValueError:
            raise AuthError(f"expired request with date {date}: not an RFC 3339 time") from None
        if abs(wall_seconds(self._clock) - signed_at) > self._skew:
            raise AuthError(
                f"expired request with date {date}: "
                f"more than {self._skew:g} s from the server clock"
            )
        scope_header = headers.get("nano-scope")
        if scope_header is not None and scope_header != auth.scope:
            raise AuthError(f"request scope mismatch: {scope_header} => {auth.scope}")
        return auth, signed_at

    # -- the replay memory across a restart (services/replay) -------------------------------

    def remembered(self) -> dict[int, array[int]]:
        """Every signature remembered, as sorted digests by the second their dates go stale."""
        self._expire(wall_seconds(self._clock))
        return {
            stale_at: array("Q", sorted([*second.settled, *second.recent]))
            for stale_at, second in self._seconds.items()
        }

    def recall(self, seconds: Mapping[int, array[int]]) -> int:
        """Remember again what :meth:`remembered` gave before a restart (their repeat windows
        are over): the signatures not yet stale; how many."""
        now = wall_seconds(self._clock)
        recalled = 0
        for stale_at, digests in seconds.items():
            if stale_at <= now or not digests:
                continue
            second = self._seconds.get(stale_at)
            if second is None:
                second = self._seconds[stale_at] = _Second()
                heapq.heappush(self._forget_at, stale_at)
            self._entries -= len(second)
            second.settled = array("Q", sorted({*second.settled, *digests}))
            self._entries += len(second)
            recalled += len(digests)
        return recalled

    def refuse_writes_before(self, moment: float) -> None:
        """Refuse writes dated before ``moment``: what a previous run accepted is unknown (it
        did not stop cleanly), and any of it could be replayed while its date is fresh."""
        self._writes_from = moment

    def _check_repeat(self, digest: int, signed_at: float, now: float, write: bool) -> None:
        self._expire(now)
        # From this second on the date itself is refused as expired: nothing to remember then.
        stale_at = math.floor(signed_at + self._skew) + 1
        second = self._seconds.get(stale_at)
        if second is not None:
            repeat_until = second.recent.get(digest)
            if repeat_until is None and second.settled_holds(digest):
                repeat_until = -math.inf  # its repeat window has passed
            if repeat_until is not None:
                if write and self._clock.seconds() > repeat_until:
                    raise AuthError("replayed request: this signature was already used")
                return
        if self._entries >= self._max_replay_entries:
            # Memory stays bounded even under a flood of valid requests; the client may retry.
            raise AuthError("too many signed requests within the replay window; retry later")
        if second is None:
            second = self._seconds[stale_at] = _Second()
            heapq.heappush(self._forget_at, stale_at)
        # The rest of the second the date names, as late as its first copy arrived: a span
        # on the steady clock, which a step of the wall clock cannot open again (QA pass 22).
        repeat_until = (
            self._clock.seconds() + (math.floor(signed_at) + 1 - signed_at) + REPEAT_MARGIN
        )
        second.recent[digest] = repeat_until
        self._entries += 1
        self._to_settle[stale_at] = max(self._to_settle.get(stale_at, 0.0), repeat_until)
        self._settle_from = min(self._settle_from, repeat_until)

    def _expire(self, now: float) -> None:
        """Forget the signatures whose dates went stale by ``now`` (the wall clock's), and
        settle those whose repeat windows ended (on the steady clock)."""
        forget_at = self._forget_at
        while forget_at and forget_at[0] <= now:
            stale_at = heapq.heappop(forget_at)
            self._entries -= len(self._seconds.pop(stale_at))
            self._to_settle.pop(stale_at, None)
        steady = self._clock.seconds()
        if steady <= self._settle_from:
            return
        for stale_at, until in list(self._to_settle.items()):
            if until < steady:
                del self._to_settle[stale_at]
                self._seconds[stale_at].settle(steady)
        self._settle_from = min(self._to_settle.values(), default=math.inf)


class _Second:
    """The signatures whose dates go stale at one whole second.

    While a signature may still be repeated by its own client (``recent``, with the moment
    that ends) it costs a dict entry; afterwards only that it was seen matters, and it moves
    to ``settled``: a sorted array of 8-byte digests, searched by bisection. The window of
    replay memory is long (the clock skew) and this is where its bytes go.
    """

    __slots__ = ("recent", "settled")

    def __init__(self) -> None:
        self.recent: dict[int, float] = {}
        self.settled = array("Q")

    def __len__(self) -> int:
        return len(self.recent) + len(self.settled)

    def settled_holds(self, digest: int) -> bool:
        at = bisect_left(self.settled, digest)
        return at < len(self.settled) and self.settled[at] == digest

    def settle(self, now: float) -> None:
        """Move the signatures whose repeat window ended before ``now`` to ``settled``."""
        done = [digest for digest, until in self.recent.items() if until < now]
        if done:
            # A new dict: one emptied by deletions keeps its table's size.
            self.recent = {digest: until for digest, until in self.recent.items() if until >= now}
            self.settled = array("Q", sorted([*self.settled, *done]))
