"""A reference model of httprouter v1.3's matching, for tests of the Klein dispatcher.

This is the trie router the API used before it moved to Klein, kept only as an oracle:
one tree per method, ``:name`` matches one non-empty segment and ``*name`` the rest of the
path; a miss is answered by a trailing-slash or fixed-path redirect (301 for GET, 307
otherwise), then by 405 with ``Allow`` when another method matches, then by 404.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from attrs import frozen

T = TypeVar("T")


@frozen
class Found(Generic[T]):
    """The path matched a route of the request's method."""

    endpoint: T
    params: Mapping[str, str]


@frozen
class Redirect:
    """The path matches once its trailing slash, case or dots are fixed."""

    status: int
    path: str


@frozen
class Allowed:
    """The path exists for other methods (405), or this is an OPTIONS request (200)."""

    status: int
    allow: str


@frozen
class NotFound:
    """Nothing matches the path."""


Outcome = Found[T] | Redirect | Allowed | NotFound


class _Node(Generic[T]):
    __slots__ = ("catch_all", "endpoint", "lower", "param", "static")

    def __init__(self) -> None:
        self.static: dict[str, _Node[T]] = {}
        self.lower: dict[str, str] = {}
        self.param: tuple[str, _Node[T]] | None = None
        self.catch_all: tuple[str, T] | None = None
        self.endpoint: T | None = None


class RouteConflict(ValueError):
    """Two registrations claim the same method and path shape."""


class Router(Generic[T]):
    """A set of ``(method, path template) -> endpoint`` registrations, matched like httprouter."""

    def __init__(self) -> None:
        self._trees: dict[str, _Node[T]] = {}
        self._templates: list[tuple[str, str]] = []

    def add(self, method: str, template: str, endpoint: T) -> None:
        """Register ``endpoint``; ``template`` uses ``:name`` and a final ``*name``."""
        node = self._trees.setdefault(method, _Node())
        segments = template.split("/")[1:]
        for index, segment in enumerate(segments):
            if segment.startswith("*"):
                if index != len(segments) - 1 or node.catch_all is not None:
                    raise RouteConflict(f"{method} {template}")
                node.catch_all = (segment[1:], endpoint)
                self._templates.append((method, template))
                return
            if segment.startswith(":"):
                if node.param is None:
                    node.param = (segment[1:], _Node())
                elif node.param[0] != segment[1:]:
                    raise RouteConflict(f"{method} {template}: parameter name differs")
                node = node.param[1]
            else:
                child = node.static.get(segment)
                if child is None:
                    child = node.static[segment] = _Node()
                    node.lower.setdefault(segment.lower(), segment)
                node = child
        if node.endpoint is not None:
            raise RouteConflict(f"{method} {template}")
        node.endpoint = endpoint
        self._templates.append((method, template))

    def templates(self) -> Iterator[tuple[str, str]]:
        """Every ``(method, template)`` registered, in registration order."""
        return iter(self._templates)

    def match(self, method: str, path: str) -> Outcome[T]:
        """Resolve a request for a percent-decoded ``path``."""
        tree = self._trees.get(method)
        if tree is not None:
            found = _lookup(tree, path)
            if found is not None:
                return found
            if path != "/":
                redirect = self._redirect(tree, method, path)
                if redirect is not None:
                    return redirect
        if method == "OPTIONS":
            allow = self._allowed(path, method)
            if allow:
                return Allowed(200, allow)
        else:
            allow = self._allowed(path, method)
            if allow:
                return Allowed(405, allow)
        return NotFound()

    def _redirect(self, tree: _Node[T], method: str, path: str) -> Redirect | None:
        status = 301 if method == "GET" else 307
        toggled = path[:-1] if path.endswith("/") else path + "/"
        if len(toggled) > 0 and _lookup(tree, toggled) is not None:
            return Redirect(status, toggled)
        cleaned = clean_path(path)
        for candidate in (cleaned, cleaned[:-1] if cleaned.endswith("/") else cleaned + "/"):
            fixed = _fold(tree, candidate)
            if fixed is not None:
                return Redirect(status, fixed)
        return None

    def _allowed(self, path: str, method: str) -> str:
        allow = [
            other
            for other, tree in self._trees.items()
            if other not in (method, "OPTIONS") and _lookup(tree, path) is not None
        ]
        if not allow:
            return ""
        allow.append("OPTIONS")
        return ", ".join(sorted(allow))


def _lookup(tree: _Node[T], path: str) -> Found[T] | None:
    if not path.startswith("/"):
        return None
    segments = path.split("/")
    params: dict[str, str] = {}
    node = tree
    for index in range(1, len(segments)):
        segment = segments[index]
        child = node.static.get(segment)
        if child is not None:
            node = child
            continue
        if node.param is not None and segment:
            params[node.param[0]] = segment
            node = node.param[1]
            continue
        if node.catch_all is not None:
            params[node.catch_all[0]] = "/" + "/".join(segments[index:])
            return Found(node.catch_all[1], params)
        return None
    if node.endpoint is None:
        return None
    return Found(node.endpoint, params)


def _fold(tree: _Node[T], path: str) -> str | None:
    """The registered spelling of ``path`` matched case-insensitively, if any."""
    if not path.startswith("/"):
        return None
    segments = path.split("/")
    fixed = [""]
    node = tree
    for index in range(1, len(segments)):
        segment = segments[index]
        spelling = node.lower.get(segment.lower())
        if spelling is not None:
            fixed.append(spelling)
            node = node.static[spelling]
            continue
        if node.param is not None and segment:
            fixed.append(segment)
            node = node.param[1]
            continue
        if node.catch_all is not None:
            fixed.extend(segments[index:])
            return "/".join(fixed)
        return None
    if node.endpoint is None:
        return None
    return "/".join(fixed)


def clean_path(path: str) -> str:
    """httprouter's ``CleanPath``, written from its documented rules, apart from the app's own.

    Go's ``path.Clean`` rules, on a path made rooted: doubled slashes and ``.`` elements go,
    ``..`` removes the element before it (and nothing at the root); the empty result is
    ``/``. Unlike ``path.Clean``, a trailing slash is kept, and a final ``.`` element leaves
    one (``/a/.`` is ``/a/``).
    """
    parts = path.split("/")
    kept: list[str] = []
    for part in parts:
        if part == "..":
            if kept:
                kept.pop()
        elif part not in ("", "."):
            kept.append(part)
    trailing = "/" if kept and parts[-1] in ("", ".") else ""
    return "/" + "/".join(kept) + trailing
