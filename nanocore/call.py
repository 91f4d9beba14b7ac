"""`nanocore call METHOD PATH [JSON]`: one signed API request from the command line.

A newcomer had no runnable way to make a signed call: the Nano signature needs code. `call`
takes the address from domain.cfg, the port and a credential from api.cfg, signs the request as
the portal does (`api.client.Signer`), prints the JSON answer indented, and exits from the
envelope: 0 when `error_code` is 0, 1 on an error envelope, 2 when no envelope came back
(usage, config or transport error). It never writes a config file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import treq
from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as CallTimeout
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.python import usage
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from nanocore import gojson
from nanocore.api.client import Signer
from nanocore.clocks import wall_seconds
from nanocore.config import API_FILE, DOMAIN_FILE, ConfigError, load_api, load_domain
from nanocore.console import Console
from nanocore.layout import API_PORT_FILE_NAME
from nanocore.options import AnyOrderOptions
from nanocore.services.listen import read_port

EXIT_OK = 0
#: The API answered with an error envelope.
EXIT_REFUSED = 1
#: No envelope came back: a usage, config or transport error.
EXIT_NO_ANSWER = 2

#: The methods of the Nano API.
METHODS = ("GET", "POST", "PUT", "DELETE")
#: Route paths in the API reference are relative to this.
API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 30.0


class CallRefused(Exception):
    """The call cannot be made as asked; nothing was sent."""


class CallOptions(AnyOrderOptions):
    synopsis = (
        "METHOD PATH [JSON | -] [--config-dir DIR] [--data-dir DIR] [--id ID] [--timeout SECONDS]"
    )
    longdesc = (
        "Send one signed request to the nanocore API and print the JSON answer. PATH is a"
        " route of the API reference (/compute_pools/), with or without the /api/v1 prefix;"
        " JSON is the request body, or - to read it from stdin. Address, port and credential"
        " come from the config folder. Exit status: 0 success, 1 error envelope, 2 no answer."
    )
    optParameters = [
        ["config-dir", None, "config", "folder holding domain.cfg and api.cfg"],
        [
            "data-dir",
            None,
            "data",
            "folder of the running nanocore (its api.port, when api.cfg says 0)",
        ],
        ["id", None, None, "credential id in api.cfg to sign with [default: the first]"],
        ["timeout", None, DEFAULT_TIMEOUT, "seconds to wait for the answer", float],
    ]

    def parseArgs(self, method: str, path: str, body: str | None = None) -> None:  # type: ignore[override]
        self["method"] = method.upper()
        if self["method"] not in METHODS:
            raise usage.UsageError(f"METHOD must be one of {', '.join(METHODS)}, not {method!r}")
        if not path:
            raise usage.UsageError("PATH must not be empty")
        self["path"] = path
        if body is not None and self["method"] == "GET":
            raise usage.UsageError("a GET request takes no body")
        self["body"] = body

    def postOptions(self) -> None:
        if not self["timeout"] > 0:
            raise usage.UsageError(f"--timeout must be positive, not {self['timeout']}")


@frozen
class Call:
    """A request ready to sign: what was asked, and with which credential."""

    method: str
    url: str
    body: bytes
    signer: Signer


def api_path(path: str) -> str:
    """The full path: a route of the reference gets the /api/v1 prefix."""
    if path.startswith(API_PREFIX + "/") or path == API_PREFIX:
        return path
    return API_PREFIX + (path if path.startswith("/") else "/" + path)


def prepare(options: CallOptions, stdin: IO[bytes]) -> Call:
    """Read the config and the body; refuse a body that is not JSON before sending it."""
    text = options["body"]
    body = stdin.read() if text == "-" else (text or "").encode("utf-8")
    if body:
        try:
            gojson.loads(body)
        except gojson.JSONError as error:
            raise CallRefused(f"the body is not JSON: {error}") from None
    return signed_call(
        Path(options["config-dir"]),
        Path(options["data-dir"]),
        options["method"],
        options["path"],
        body,
        credential=options["id"],
    )


def signed_call(
    config_dir: Path,
    data_dir: Path,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    credential: str | None = None,
) -> Call:
    """A request to the API of the nanocore whose config folder is ``config_dir``, signed
    with ``credential`` of its api.cfg (default: the first)."""
    try:
        domain = load_domain(config_dir / DOMAIN_FILE)
        api = load_api(config_dir / API_FILE)
    except ConfigError as error:
        raise CallRefused(f"config error: {error}") from None
    credentials = [c for c in api.credentials if credential is None or c.id == credential]
    if not credentials:
        known = ", ".join(c.id for c in api.credentials)
        raise CallRefused(
            f"no credential {credential!r} in {config_dir / API_FILE} (it has {known})"
        )
    port = api.port
    if port == 0:
        # Any free port: the running daemon reports the one it got (services.listen.PortFile).
        port_file = data_dir / API_PORT_FILE_NAME
        found = read_port(port_file)
        if found is None:
            raise CallRefused(
                f"api.cfg says port 0 and {port_file} names no port: is nanocore running?"
            )
        port = found
    url = f"http://{domain.listen_address}:{port}{api_path(path)}"
    signer = Signer(credentials[0].id, credentials[0].key)
    return Call(method, url, body, signer)


@frozen
class Answer:
    status: int
    location: str
    content: bytes


async def send(http: Any, call: Call, now: float) -> Answer:
    headers = call.signer.headers(call.method, call.url, call.body, now=now)
    response = await http.request(
        call.method,
        call.url,
        data=call.body or None,
        headers={name: [value] for name, value in headers.items()},
        allow_redirects=False,
    )
    content = await http.content(response)
    location = response.headers.getRawHeaders(b"location", [b""])[0].decode("latin-1")
    return Answer(response.code, location, content)


def _transport_reason(error: Exception) -> str:
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(reason.getErrorMessage() for reason in reasons)
    return str(error) or type(error).__name__


def show(console: Console, answer: Answer) -> int:
    """Print the answer; the exit status comes from the envelope."""
    if 300 <= answer.status < 400:
        console.complain(
            f"nanocore call: HTTP {answer.status}: the API moved this path to"
            f" {answer.location or '(no location)'}; call that path"
        )
        return EXIT_NO_ANSWER
    try:
        document = gojson.loads(answer.content)
    except gojson.JSONError:
        console.say(answer.content.decode("utf-8", errors="replace"))
        console.complain(f"nanocore call: HTTP {answer.status}: the answer is not JSON")
        return EXIT_NO_ANSWER
    console.say(json.dumps(document, indent=2, ensure_ascii=False))
    if isinstance(document, dict) and "error_code" in document:
        return EXIT_OK if document["error_code"] == 0 else EXIT_REFUSED
    return EXIT_OK if 200 <= answer.status < 300 else EXIT_NO_ANSWER


class Unanswered(Exception):
    """No answer came back (timeout, or the connection failed); the message says which."""


async def answer_of(reactor: Any, http: Any, call: Call, timeout: float) -> Answer:
    """Send ``call`` signed now; its answer, or :class:`Unanswered` within ``timeout``."""
    sending = Deferred.fromCoroutine(send(http, call, wall_seconds(reactor)))
    sending.addTimeout(timeout, reactor)
    try:
        return await sending
    except CallTimeout:
        raise Unanswered(f"no answer from {call.url} within {timeout:g} s") from None
    except (
        ConnectError,
        ConnectionClosed,
        ResponseFailed,
        ResponseNeverReceived,
        RequestTransmissionFailed,
    ) as error:
        raise Unanswered(
            f"cannot reach {call.url}: {_transport_reason(error)};"
            " is nanocore running? (`nanocore status`)"
        ) from None


async def call(
    reactor: Any, options: CallOptions, console: Console, stdin: IO[bytes], http: Any = treq
) -> int:
    """Run `nanocore call`; `http` is treq, or a StubTreq in tests."""
    try:
        prepared = prepare(options, stdin)
        answer = await answer_of(reactor, http, prepared, options["timeout"])
    except (CallRefused, Unanswered) as refused:
        console.complain(f"nanocore call: {refused}")
        return EXIT_NO_ANSWER
    return show(console, answer)
