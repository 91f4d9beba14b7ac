"""Signing requests the way the Nano frontend does (§2.7): for tests, benchmarks and tools."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

from attrs import frozen

from nanocore.api.auth import RequestParts, Variant, sign

REQUEST_HEADERS_WITH_BODY = "host;content-type;nano-session;nano-date;nano-scope"
REQUEST_HEADERS_WITHOUT_BODY = "host;nano-session;nano-date;nano-scope"


@frozen
class Signer:
    """Produces the headers of a signed request for one credential."""

    credential_id: str
    api_key: str
    session: str = "nanocore-client"

    def headers(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        *,
        now: float,
        variant: Variant = Variant.REQUEST,
    ) -> dict[bytes, bytes]:
        """Headers (``Host`` included) signing ``method url body`` at epoch time ``now``."""
        parts = urlsplit(url)
        moment = datetime.fromtimestamp(now, UTC)
        date = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
        scope = f"{moment:%Y%m%d}/default/nano_request"
        host = parts.netloc
        with_body = bool(body) and method not in ("GET", "HEAD", "OPTIONS")
        signed = (
            REQUEST_HEADERS_WITH_BODY
            if with_body and variant is Variant.REQUEST
            else REQUEST_HEADERS_WITHOUT_BODY
        )
        values = {
            "host": host,
            "nano-session": self.session,
            "nano-date": date,
            "nano-scope": scope,
        }
        if with_body:
            values["content-type"] = "application/json"
        request = RequestParts(method, unquote(parts.path), parts.query, values, body)
        authorization = sign(self.credential_id, self.api_key, request, scope, signed, variant)
        headers = {name.title().encode(): value.encode() for name, value in values.items()}
        headers[b"Nano-Authorization"] = authorization.encode()
        return headers
