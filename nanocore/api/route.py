"""What a route module declares: path, method, body, signature variant, handler, documentation.

A family of routes is declared on its handlers, as Klein's ``@app.route`` does::

    compute: Family[Operations] = Family("compute pools")

    @compute.route("GET", "/compute_pools/:pool", "Get one compute pool", response=POOL)
    def get_pool(ops: Operations, call: Call) -> object:
        return compute_pool(ops.compute_pools.get(call.params["pool"]))

A handler receives the operations object and the decoded :class:`Call`; it returns the
``data`` of the envelope (or a :class:`Reply`, a :class:`Raw`, or a Deferred of one). Because
the operations come in as an argument, the table is built without them (to document it) and
mypy checks every handler against the real operations class.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Generic, Never, TypeVar, cast

from attrs import frozen
from twisted.internet.defer import Deferred

from nanocore.api.auth import Variant
from nanocore.api.decode import Body
from nanocore.api.schema import EMPTY, Schema

#: Every API path starts with this prefix (``APIRoot`` + ``APIVersion`` in Core).
PREFIX = "/api/v1"

#: What the handlers of a table are given; a route that needs none accepts ``object``.
Ops = TypeVar("Ops", contravariant=True)
Result = TypeVar("Result")
T = TypeVar("T")


class Fields(Mapping[str, object]):
    """A decoded body, each field read with the type its declaration gives it.

    :class:`~nanocore.api.decode.Body` guarantees the types at runtime; the typed readers let
    mypy check what a handler passes on to the operations.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, object]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> object:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def text(self, name: str) -> str:
        return self._read(name, str)

    def flag(self, name: str) -> bool:
        return self._read(name, bool)

    def integer(self, name: str) -> int:
        return self._read(name, int)

    def number(self, name: str) -> float:
        return self._read(name, float)

    def texts(self, name: str) -> tuple[str, ...]:
        return cast(tuple[str, ...], self._read(name, tuple))

    def integers(self, name: str) -> tuple[int, ...]:
        return cast(tuple[int, ...], self._read(name, tuple))

    def fields(self, name: str) -> Fields | None:
        """A nested object (``Kind.OBJECT``), or None where the body had none."""
        value = self._values[name]
        return None if value is None else Fields(self._read(name, dict))

    def _read(self, name: str, kind: type[T]) -> T:
        value = self._values[name]
        if not isinstance(value, kind):
            raise TypeError(f"body field {name} is {type(value).__name__}, not {kind.__name__}")
        return value


@frozen
class Call:
    """One decoded request as a handler sees it: no HTTP objects past this point."""

    params: Mapping[str, str]
    query: Mapping[str, str]
    body: Fields
    #: The raw query string, for the few routes that read a repeated key (``tags``).
    raw_query: str = ""


@frozen
class Reply:
    """A success payload with a status other than 200 (Core uses 201 and 202 for polling)."""

    data: object
    status: int = 200


@frozen
class Raw:
    """A success answered with its own bytes and type instead of the envelope."""

    body: bytes
    content_type: bytes = b"application/json"


@frozen
class Route(Generic[Ops]):
    """One registration of the route table; the OpenAPI document is generated from these."""

    method: str
    #: httprouter template relative to :data:`PREFIX` (``:name`` one segment, ``*name`` the rest).
    path: str
    handler: Callable[[Ops, Call], object]
    summary: str
    tag: str
    #: ``None`` means the route reads no body.
    body: Body | None = None
    #: ``None`` means unsigned (documents about the API itself, which hold no secret).
    auth: Variant | None = Variant.REQUEST
    #: JSON schema of ``data`` on success, for the OpenAPI document.
    response: Schema = EMPTY
    #: Reads whose encoded answer may be kept until the operations' revision changes.
    cacheable: bool = False
    #: For a cacheable read whose answer depends on more than the store: what to keep it
    #: by instead of the operations' revision (status: the Cells' liveness too).
    kept_while: Callable[[Ops], Hashable] | None = None
    #: Query parameters the handler reads, for the OpenAPI document.
    query: tuple[str, ...] = ()
    #: Media type of a route answering :class:`Raw` bytes instead of the envelope.
    raw: str = ""
    #: Media type of a body streamed to storage instead of decoded (image uploads).
    upload: str = ""

    @property
    def full_path(self) -> str:
        return PREFIX + self.path


#: A route of any table, to read its declaration: routes are contravariant in what their
#: handlers are given, so every ``Route[X]`` is an ``AnyRoute``.
AnyRoute = Route[Never]


class Family(Generic[Ops]):
    """The routes of one resource family, collected by :meth:`route` in declaration order."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._routes: list[Route[Ops]] = []

    @property
    def routes(self) -> tuple[Route[Ops], ...]:
        return tuple(self._routes)

    def route(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        body: Body | None = None,
        auth: Variant | None = Variant.REQUEST,
        response: Schema = EMPTY,
        cacheable: bool = False,
        kept_while: Callable[[Ops], Hashable] | None = None,
        query: tuple[str, ...] = (),
        raw: str = "",
        upload: str = "",
    ) -> Callable[[Callable[[Ops, Call], Result]], Callable[[Ops, Call], Result]]:
        """Declare the decorated handler as ``method path`` (see :class:`Route`)."""

        def register(handler: Callable[[Ops, Call], Result]) -> Callable[[Ops, Call], Result]:
            self._routes.append(
                Route(
                    method, path, handler, summary, self.tag,
                    body=body, auth=auth, response=response, cacheable=cacheable,
                    kept_while=kept_while, query=query, raw=raw, upload=upload,
                )
            )  # fmt: skip
            return handler

        return register


def empty(committed: Deferred[T]) -> Deferred[str]:
    """Core's "nothing to return" (``data: ""``), once the change is committed."""
    return committed.addCallback(lambda _: "")
