"""The Klein dispatcher answers every path as the httprouter model does (api-reference §1.2).

Paths are built from the real route table with the distortions clients make (wrong case,
a trailing slash too many or too few, ``.``/``..`` and doubled slashes, other methods) and
sent as raw HTTP through the real site; status, ``Location`` and ``Allow`` must be the model's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nanocore.api import routing
from nanocore.api.app import api_site_for
from tests.httprouter_model import Allowed, Found, NotFound, Redirect, Router, clean_path
from tests.test_api_app import documentation_resource

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "get")
SEGMENT = st.text("abcXYZ019-_.", min_size=1, max_size=6)


def distort(segment: str, draw: Any) -> str:
    if segment.startswith(":"):
        return draw(SEGMENT.filter(lambda text: text not in (".", "..")))
    if segment.startswith("*"):
        rest = draw(st.lists(SEGMENT, max_size=2))
        return "/".join(rest)
    if segment and draw(st.booleans()):
        return "".join(c.upper() if draw(st.booleans()) else c for c in segment)
    return segment


@st.composite
def requests(draw: Any, templates: list[str]) -> tuple[str, str]:
    method = draw(st.sampled_from(METHODS))
    if draw(st.integers(0, 9)) == 0:
        return method, "/" + "/".join(draw(st.lists(SEGMENT, max_size=4)))
    template = draw(st.sampled_from(templates))
    segments = [distort(segment, draw) for segment in template.split("/")]
    path = "/".join(segments)
    change = draw(st.sampled_from(("none", "slash", "double", "dots", "dot")))
    if change == "slash":
        path = path[:-1] if path.endswith("/") else path + "/"
    elif change == "double":
        path = path.replace("/api/", "/api//", 1)
    elif change == "dots":
        path = path.replace("/v1/", "/v1/x/../", 1)
    elif change == "dot":
        path = path.replace("/api/", "/api/./", 1)
    return method, path


class ModelParityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.resource = documentation_resource(Clock())
        self.model: Router[str] = Router()
        for route in self.resource.routes:
            self.model.add(route.method, route.full_path, route.full_path)
        self.site = api_site_for(self.resource)

    def send(self, method: str, path: str) -> tuple[int, dict[bytes, bytes]]:
        transport = StringTransport()
        channel = self.site.buildProtocol(None)
        channel.makeConnection(transport)
        channel.dataReceived(f"{method} {path}?q=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        channel.connectionLost(Failure(ConnectionDone()))
        head = transport.value().split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b": ")
            headers[name.lower()] = value
        return int(head[0].split()[1]), headers

    @settings(max_examples=400)
    @given(st.data())
    def test_every_answer_is_the_models(self, data: Any) -> None:
        templates = sorted({route.full_path for route in self.resource.routes})
        self.assertAnswersAsModel(*data.draw(requests(templates)))

    def test_final_dot_element_keeps_a_slash(self) -> None:
        """``CleanPath("/a/.")`` is ``/a/``: the fixed-path redirect keeps the slash."""
        self.assertAnswersAsModel("GET", "/API/v1/search/security_policy_groups/x/.")
        self.assertAnswersAsModel("PUT", "/API/v1/search/security_policy_groups/x/./.")

    def assertAnswersAsModel(self, method: str, path: str) -> None:
        status, headers = self.send(method, path)
        expected = self.model.match(method, path)
        if isinstance(expected, Found):
            self.assertEqual(status, 200, (method, path))
        elif isinstance(expected, Redirect):
            location = quote(expected.path, safe="/:@!$&'()*+,;=-._~") + "?q=1"
            self.assertEqual(
                (status, headers.get(b"location")),
                (expected.status, location.encode()),
                (method, path),
            )
        elif isinstance(expected, Allowed):
            self.assertEqual(
                (status, headers.get(b"allow")),
                (expected.status, expected.allow.encode()),
                (method, path),
            )
        else:
            assert isinstance(expected, NotFound)
            self.assertEqual(status, 404, (method, path))


class CleanPathModelTests(SynchronousTestCase):
    """The oracle's ``CleanPath`` against httprouter's documented behaviour."""

    def test_documented_cases(self) -> None:
        cases = {
            "": "/",
            "abc": "/abc",
            "../../abc": "/abc",
            "//": "/",
            "/abc//": "/abc/",
            "//abc//def": "/abc/def",
            ".": "/",
            "/abc/./def": "/abc/def",
            "/abc/.": "/abc/",
            "../": "/",
            "/abc/def/ghi/../jkl": "/abc/def/jkl",
            "/abc/def/..": "/abc",
            "/abc/def/../": "/abc/",
            "/abc/def/../../..": "/",
            "abc/../../././../def": "/def",
        }
        self.assertEqual({path: clean_path(path) for path in cases}, cases)

    @given(st.text("ab./", max_size=14))
    def test_the_apps_clean_path_is_the_models(self, tail: str) -> None:
        path = "/" + tail
        self.assertEqual(routing.clean_path(path), clean_path(path), path)
