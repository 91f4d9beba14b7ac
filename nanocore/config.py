"""The three JSON config files of Nano Core 1.4.0: load, validate, and write safe defaults.

The keys, types and defaults are the original's (`config/domain.cfg`, `config/api.cfg`,
`config/image.cfg`), so an existing Nano installation's files load unchanged. Unlike the
original, every value is checked when the file is read: a bad value stops the start with a
`ConfigError` that names the file, the key, what was found and what was expected. Unknown keys
are logged as warnings and ignored. Missing files are generated without prompting, with
values that are safe on any machine (loopback address, a random API key), mode 0600.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from attrs import field, frozen
from twisted.logger import Logger

from nanocore import gojson
from nanocore.atomicfile import write_file
from nanocore.model import is_ipv4

log = Logger()

DOMAIN_FILE = "domain.cfg"
API_FILE = "api.cfg"
IMAGE_FILE = "image.cfg"

#: Image-server certificate names the original generates in `cert/`.
IMAGE_CERT_NAME = "nano_image.crt.pem"
IMAGE_KEY_NAME = "nano_image.key.pem"

#: The key the original writes when `credentials` is empty; it is public, so nanocore never
#: writes it and warns when it finds it.
PLACEHOLDER_KEY = "ThisIsAKeyPlaceHolder_ChangeToYourContent"

#: Config files are a few hundred bytes; anything this large is refused before parsing.
MAX_CONFIG_BYTES = 1024 * 1024

#: Mode of every config file nanocore writes: the API keys are secrets.
CONFIG_FILE_MODE = 0o600

#: The original's defaults.
DEFAULT_DOMAIN = "nano"
DEFAULT_GROUP_ADDRESS = "224.0.0.226"
DEFAULT_GROUP_PORT = 5599
DEFAULT_TIMEOUT = 10
DEFAULT_API_PORT = 5850
#: The plaintext KCP link for stock Cells is on unless switched off, so that an existing
#: cluster's Cells link to nanocore as they did to the original.
DEFAULT_KCP_LINK = True
#: Largest image upload nanocore takes unless image.cfg says otherwise: 1 TiB.
DEFAULT_MAX_UPLOAD = 1 << 40

#: Generated `listen_address`: safe on a fresh machine, reachable only from the host itself.
DEFAULT_LISTEN_ADDRESS = "127.0.0.1"
#: Id of the generated API credential (the key beside it is random).
DEFAULT_CREDENTIAL_ID = "nanocore"


class ConfigError(Exception):
    """A config file cannot be used; says which file, which key, what was found and expected."""

    def __init__(self, path: Path, key: str, found: str, expected: str) -> None:
        super().__init__(path, key, found, expected)
        self.path = path
        self.key = key
        self.found = found
        self.expected = expected

    def __str__(self) -> str:
        where = f'{self.path}, key "{self.key}"' if self.key else str(self.path)
        return f"{where}: found {self.found}, expected {self.expected}"


@frozen(kw_only=True)
class DomainConfig:
    """`config/domain.cfg`: the discovery domain and the address Core listens on."""

    listen_address: str
    domain: str = DEFAULT_DOMAIN
    group_address: str = DEFAULT_GROUP_ADDRESS
    group_port: int = DEFAULT_GROUP_PORT
    #: Seconds every request to a Cell may take (the original's "operate timeout").
    timeout: int = DEFAULT_TIMEOUT
    #: Whether Core serves stock Cells on the plaintext KCP link (new in nanocore).
    kcp_link: bool = DEFAULT_KCP_LINK


@frozen
class Credential:
    """One API identity: the id a client sends and the key it signs with."""

    id: str
    key: str = field(repr=False)


@frozen(kw_only=True)
class APIConfig:
    """`config/api.cfg`: the REST API port and the identities allowed to call it."""

    credentials: tuple[Credential, ...]
    port: int = DEFAULT_API_PORT

    def credential_keys(self) -> dict[str, str]:
        """The credentials as the `{id: key}` mapping the API room takes."""
        return {credential.id: credential.key for credential in self.credentials}


@frozen(kw_only=True)
class ImageConfig:
    """`config/image.cfg`: the image server's TLS certificate and key files.

    Relative paths are relative to the working directory of the process.
    """

    cert_file: str
    key_file: str
    #: Largest image upload in bytes (new in nanocore; the original had no limit).
    max_upload: int = DEFAULT_MAX_UPLOAD


@frozen(kw_only=True)
class CoreConfig:
    """All three files, validated."""

    domain: DomainConfig
    api: APIConfig
    image: ImageConfig


# --- reading -------------------------------------------------------------------------------

_MISSING: Any = object()
_T = TypeVar("_T")


class _Invalid(Exception):
    """Raised by a value check; carries what was expected."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _describe(value: object) -> str:
    """A short rendering of a JSON value for an error message."""
    if value is _MISSING:
        return "nothing (the key is missing)"
    # Python's rendering, not Go's: it shows 5599.0 as written, where Go would print 5599.
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > 60:
        text = text[:57] + "..."
    return text


def _describe_secret(value: object) -> str:
    """Like `_describe`, but never echoes a key into a terminal or a log."""
    if value is _MISSING:
        return _describe(value)
    if isinstance(value, str):
        return '""' if value == "" else f"a string of {len(value)} characters"
    return f"a JSON {_json_type(value)}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def read_document(path: Path) -> dict[str, Any]:
    """Read one config file as a JSON object, refusing oversized or malformed files."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file", "a JSON config file") from None
    except OSError as error:
        raise ConfigError(
            path, "", f"an unreadable file ({error.strerror})", "a readable JSON file"
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            path, "", f"more than {MAX_CONFIG_BYTES} bytes", "a small JSON config file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            path, "", f"bytes that are not UTF-8 (at offset {error.start})", "UTF-8 JSON"
        ) from None
    try:
        document = gojson.loads(text)
    except gojson.JSONError as error:
        raise ConfigError(path, "", f"invalid JSON ({error})", "a JSON object") from None
    if not isinstance(document, dict):
        raise ConfigError(path, "", f"a JSON {_json_type(document)}", "a JSON object")
    return document


class _Section:
    """Reads the keys of one JSON object, with Go's key matching, and reports what is left.

    Go's `encoding/json` matches keys case-insensitively, preferring the exact spelling; the
    original's files rely on that, so nanocore does the same.
    """

    def __init__(self, path: Path, prefix: str, document: Mapping[str, Any]) -> None:
        self.path = path
        self.prefix = prefix
        self.document = document
        self.used: set[str] = set()

    def _lookup(self, key: str) -> object:
        if key in self.document:
            self.used.add(key)
            return self.document[key]
        for candidate, value in self.document.items():
            if candidate.lower() == key.lower():
                self.used.add(candidate)
                return value
        return _MISSING

    def read(
        self,
        key: str,
        check: Callable[[object], _T],
        default: _T = _MISSING,
        *,
        secret: bool = False,
    ) -> _T:
        value = self._lookup(key)
        if value is _MISSING and default is not _MISSING:
            return default
        try:
            return check(value)
        except _Invalid as invalid:
            found = _describe_secret(value) if secret else _describe(value)
            raise ConfigError(self.path, self.prefix + key, found, invalid.expected) from None

    def warn_unknown(self) -> None:
        for key in self.document:
            if key not in self.used:
                log.warn(
                    "{path}: unknown key {key!r} ignored",
                    path=str(self.path),
                    key=self.prefix + key,
                )


def _non_empty_string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("a non-empty string")
    return value


#: What a credential id may hold: the ``Nano-Authorization`` header ends it at ``/`` ``,``
#: ``=`` or a space, and cannot carry a control character (QA pass 20: such ids were taken,
#: and no request could ever use them).
_CREDENTIAL_ID = re.compile(r"[^\s,=/\x00-\x1f\x7f]{1,255}")
#: The discovery domain: travels in every ping and echo, compared exactly.
_DOMAIN = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


def _credential_id(value: object) -> str:
    if not isinstance(value, str) or _CREDENTIAL_ID.fullmatch(value) is None:
        raise _Invalid("1-255 characters without spaces, control characters, '/', ',' or '='")
    return value


def _domain(value: object) -> str:
    if not isinstance(value, str) or _DOMAIN.fullmatch(value) is None:
        raise _Invalid("1-255 characters without control characters")
    return value


#: The largest value of Go's ``int`` (64-bit): its decoder refuses a number above it.
GO_INT_MAX = 2**63 - 1


def _integer(minimum: int, maximum: int = GO_INT_MAX) -> Callable[[object], int]:
    """An integer in ``minimum..maximum``; never above what Go's ``int`` holds, which the
    original's decoder refused (a larger timeout would reach the reactor as a delay)."""
    expected = f"an integer from {minimum} to {maximum}"

    def check(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(expected)
        if value < minimum or value > maximum:
            raise _Invalid(expected)
        return value

    return check


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _ipv4(value: object) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise _Invalid("an IPv4 address string")
    if not is_ipv4(value):
        raise _Invalid("an IPv4 address such as 192.168.1.31")
    return ipaddress.IPv4Address(value)


def _listen_address(value: object) -> str:
    address = _ipv4(value)
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        raise _Invalid("the unicast IPv4 address of one interface of this host")
    return str(address)


def _group_address(value: object) -> str:
    address = _ipv4(value)
    if not address.is_multicast:
        raise _Invalid("an IPv4 multicast address (224.0.0.0 to 239.255.255.255)")
    return str(address)


_port = _integer(1, 65535)
#: 0 lets the OS choose a free port, as Go's `Listen(":0")` did; the daemon reports it.
_api_port = _integer(0, 65535)


def _timeout(value: object) -> int:
    seconds = _integer(0)(value)
    # The original applies the timeout only when it is positive and keeps 10 s otherwise.
    return seconds or DEFAULT_TIMEOUT


def load_domain(path: Path) -> DomainConfig:
    section = _Section(path, "", read_document(path))
    config = DomainConfig(
        domain=section.read("domain", _domain, DEFAULT_DOMAIN),
        group_address=section.read("group_address", _group_address, DEFAULT_GROUP_ADDRESS),
        group_port=section.read("group_port", _port, DEFAULT_GROUP_PORT),
        listen_address=section.read("listen_address", _listen_address),
        timeout=section.read("timeout", _timeout, DEFAULT_TIMEOUT),
        kcp_link=section.read("kcp_link", _boolean, DEFAULT_KCP_LINK),
    )
    section.warn_unknown()
    return config


def _credentials(path: Path) -> Callable[[object], tuple[Credential, ...]]:
    def check(value: object) -> tuple[Credential, ...]:
        if not isinstance(value, list) or not value:
            raise _Invalid('a non-empty array of {"id": ..., "key": ...} objects')
        credentials: list[Credential] = []
        for index, entry in enumerate(value):
            prefix = f"credentials[{index}]"
            if not isinstance(entry, dict):
                raise ConfigError(
                    path, prefix, _describe(entry), 'an object {"id": ..., "key": ...}'
                )
            section = _Section(path, prefix + ".", entry)
            credential = Credential(
                id=section.read("id", _credential_id),
                key=section.read("key", _non_empty_string, secret=True),
            )
            section.warn_unknown()
            if any(seen.id == credential.id for seen in credentials):
                raise ConfigError(
                    path, prefix + ".id", _describe(credential.id), "an id used only once"
                )
            if credential.key == PLACEHOLDER_KEY:
                log.warn(
                    "{path}: credential {id!r} uses the public placeholder key of the Nano"
                    " README; anyone can sign API requests with it: replace it",
                    path=str(path),
                    id=credential.id,
                )
            credentials.append(credential)
        return tuple(credentials)

    return check


def load_api(path: Path) -> APIConfig:
    section = _Section(path, "", read_document(path))
    config = APIConfig(
        port=section.read("port", _api_port, DEFAULT_API_PORT),
        credentials=section.read("credentials", _credentials(path)),
    )
    section.warn_unknown()
    return config


def load_image(path: Path) -> ImageConfig:
    section = _Section(path, "", read_document(path))
    config = ImageConfig(
        cert_file=section.read("cert_file", _non_empty_string),
        key_file=section.read("key_file", _non_empty_string),
        max_upload=section.read("max_upload", _integer(1), DEFAULT_MAX_UPLOAD),
    )
    section.warn_unknown()
    return config


def load_config(config_dir: Path) -> CoreConfig:
    """Load and validate the three files in `config_dir`; `ConfigError` on the first fault."""
    return CoreConfig(
        domain=load_domain(config_dir / DOMAIN_FILE),
        api=load_api(config_dir / API_FILE),
        image=load_image(config_dir / IMAGE_FILE),
    )


# --- writing defaults ----------------------------------------------------------------------


def default_documents(cert_dir: Path) -> dict[str, dict[str, Any]]:
    """The content of each generated file; the API key is fresh on every call."""
    return {
        DOMAIN_FILE: {
            "domain": DEFAULT_DOMAIN,
            "group_address": DEFAULT_GROUP_ADDRESS,
            "group_port": DEFAULT_GROUP_PORT,
            "listen_address": DEFAULT_LISTEN_ADDRESS,
            "timeout": DEFAULT_TIMEOUT,
            "kcp_link": DEFAULT_KCP_LINK,
        },
        API_FILE: {
            "port": DEFAULT_API_PORT,
            "credentials": [
                {"id": DEFAULT_CREDENTIAL_ID, "key": secrets.token_urlsafe(32)},
            ],
        },
        IMAGE_FILE: {
            "cert_file": str(cert_dir.absolute() / IMAGE_CERT_NAME),
            "key_file": str(cert_dir.absolute() / IMAGE_KEY_NAME),
        },
    }


def ensure_config(config_dir: Path, *, cert_dir: Path | None = None) -> list[Path]:
    """Write each missing config file with safe defaults (mode 0600); return the files written.

    Existing files are never touched. `cert_dir` (default: `cert/` beside `config_dir`) is
    where the generated image.cfg points its certificate and key.
    """
    if cert_dir is None:
        cert_dir = config_dir.absolute().parent / "cert"
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []
    for name, document in default_documents(cert_dir).items():
        path = config_dir / name
        if path.exists():
            continue
        content = (gojson.dumps(document, indent=1) + "\n").encode("utf-8")
        if write_file(path, content, mode=CONFIG_FILE_MODE, replace=False):
            log.info("wrote default config file {path} (mode 0600)", path=str(path))
            written.append(path)
    return written
