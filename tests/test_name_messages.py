"""Every route that takes a name refuses a bad one in its own words, quoting at most a cut of it.

Core qualified some names (``invalid pool name '<p>': illegal char '<c>'``) and no length;
nanocore keeps names to 255 characters and keeps labels (names Core never qualified) free of
invisible characters. Those refusals used to come from the model, in its generic words and
echoing the whole value. Here every route is asked through the signed API against the real
store: a table with the exact answers, a property over drawn names, and the boundary.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from nanocore import model as m
from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.operations.core import Operations
from nanocore.store import Insert, Store, UnitOfWork

NOW = 1_714_529_472.0
GiB = 1 << 30
#: What every route's fixtures name: ids of records the setUp inserts.
GUEST, DISK, ISO, TEMPLATE, POLICY = "i1", "disk-1", "iso-1", "tpl-1", "spg-1"


class Rule(Enum):
    """What a kind of name may hold."""

    QUALIFIED = "_-"  # Core's qualifier: A-Z a-z 0-9 and these
    DOTTED = "_-."  # disk image and snapshot names
    LABEL = ""  # free text without invisible characters (Core never qualified these)


Request = tuple[str, str, Any]


@frozen
class NameRoute:
    """A route, where it takes a name, and the words its refusals use (``invalid <kind> name``)."""

    title: str
    kind: str
    rule: Rule
    request: Callable[[str], Request]
    #: In the path: a name there is bounded by the request line, and cannot hold ``/``.
    in_path: bool = False


def _path(name: str) -> str:
    """A path segment holding ``name``; dots too are escaped, or ``.`` would be a step."""
    return quote(name, safe="").replace(".", "%2E")


def _guest(**fields: Any) -> dict[str, Any]:
    body = {"name": "vm1", "owner": "alice", "group": "team", "pool": "default",
            "template": TEMPLATE, "cores": 1, "memory": GiB, "disks": [GiB]}  # fmt: skip
    return body | fields


def _batch(**fields: Any) -> dict[str, Any]:
    body = _guest(name_prefix="vm", name_rule="order", count=2) | fields
    del body["name"]
    return body


def _template(**fields: Any) -> dict[str, Any]:
    body = {"name": "small", "admin": "root", "operating_system": "linux", "disk": "scsi",
            "network": "virtio", "display": "vga", "control": "vnc"}  # fmt: skip
    return body | fields


def _policy(**fields: Any) -> dict[str, Any]:
    body = {"name": "web", "user": "admin", "group": "ops", "default_action": "accept"}
    return body | fields


def _image(**fields: Any) -> dict[str, Any]:
    return {"name": "base", "owner": "admin", "group": "ops"} | fields


QUALIFIED, DOTTED, LABEL = Rule.QUALIFIED, Rule.DOTTED, Rule.LABEL
NOPE = "/instances/nope/snapshots/"

ROUTES: tuple[NameRoute, ...] = (
    NameRoute("POST /compute_pools/:pool", "pool", QUALIFIED,
              lambda n: ("POST", f"/compute_pools/{_path(n)}", None), in_path=True),
    NameRoute("PUT /compute_pools/:pool", "pool", QUALIFIED,
              lambda n: ("PUT", f"/compute_pools/{_path(n)}", {}), in_path=True),
    NameRoute("POST /storage_pools/:pool", "storage pool", QUALIFIED,
              lambda n: ("POST", f"/storage_pools/{_path(n)}",
                         {"type": "nfs", "host": "h", "target": "/t"}), in_path=True),
    NameRoute("PUT /storage_pools/:pool", "storage pool", QUALIFIED,
              lambda n: ("PUT", f"/storage_pools/{_path(n)}",
                         {"type": "nfs", "host": "h", "target": "/t"}), in_path=True),
    NameRoute("POST /address_pools/:pool", "address pool", LABEL,
              lambda n: ("POST", f"/address_pools/{_path(n)}",
                         {"gateway": "192.0.2.1", "provider": "dhcp"}), in_path=True),
    NameRoute("POST /guests/ name", "guest", QUALIFIED,
              lambda n: ("POST", "/guests/", _guest(name=n))),
    NameRoute("POST /guests/ owner", "owner", QUALIFIED,
              lambda n: ("POST", "/guests/", _guest(owner=n))),
    NameRoute("POST /guests/ group", "group", QUALIFIED,
              lambda n: ("POST", "/guests/", _guest(group=n))),
    NameRoute("PUT /guests/:id/name/", "guest", QUALIFIED,
              lambda n: ("PUT", f"/guests/{GUEST}/name/", {"name": n})),
    NameRoute("POST /batch/create_guest/ owner", "owner", QUALIFIED,
              lambda n: ("POST", "/batch/create_guest/", _batch(owner=n))),
    NameRoute("POST /batch/create_guest/ group", "group", QUALIFIED,
              lambda n: ("POST", "/batch/create_guest/", _batch(group=n))),
    NameRoute("POST /templates/ name", "template", LABEL,
              lambda n: ("POST", "/templates/", _template(name=n))),
    NameRoute("POST /templates/ admin", "admin", LABEL,
              lambda n: ("POST", "/templates/", _template(admin=n))),
    NameRoute("PUT /templates/:id name", "template", LABEL,
              lambda n: ("PUT", f"/templates/{TEMPLATE}", _template(name=n))),
    NameRoute("POST /security_policy_groups/ name", "security policy group", LABEL,
              lambda n: ("POST", "/security_policy_groups/", _policy(name=n))),
    NameRoute("POST /security_policy_groups/ user", "user", QUALIFIED,
              lambda n: ("POST", "/security_policy_groups/", _policy(user=n))),
    NameRoute("PUT /security_policy_groups/:id group", "group", QUALIFIED,
              lambda n: ("PUT", f"/security_policy_groups/{POLICY}", _policy(group=n))),
    NameRoute("PUT /security_policy_groups/:id name", "security policy group", LABEL,
              lambda n: ("PUT", f"/security_policy_groups/{POLICY}", _policy(name=n))),
    NameRoute("POST /disk_images/ name", "image", DOTTED,
              lambda n: ("POST", "/disk_images/", _image(name=n))),
    NameRoute("POST /disk_images/ name, capturing", "image", DOTTED,
              lambda n: ("POST", "/disk_images/", _image(name=n, guest="nope"))),
    NameRoute("POST /disk_images/ owner", "owner", QUALIFIED,
              lambda n: ("POST", "/disk_images/", _image(owner=n))),
    NameRoute("PUT /disk_images/:id name", "image", DOTTED,
              lambda n: ("PUT", f"/disk_images/{DISK}", {"name": n})),
    NameRoute("PUT /disk_images/:id group", "group", QUALIFIED,
              lambda n: ("PUT", f"/disk_images/{DISK}", {"group": n})),
    NameRoute("PATCH /disk_images/ owner", "owner", QUALIFIED,
              lambda n: ("PATCH", "/disk_images/", {"owner": n, "group": "ops"})),
    NameRoute("POST /media_images/ name", "media image", LABEL,
              lambda n: ("POST", "/media_images/", _image(name=n))),
    NameRoute("POST /media_images/ group", "group", QUALIFIED,
              lambda n: ("POST", "/media_images/", _image(group=n))),
    NameRoute("PUT /media_images/:id name", "media image", LABEL,
              lambda n: ("PUT", f"/media_images/{ISO}", {"name": n})),
    NameRoute("PATCH /media_images/ group", "group", QUALIFIED,
              lambda n: ("PATCH", "/media_images/", {"owner": "admin", "group": n})),
    NameRoute("POST /instances/:id/snapshots/", "snapshot", DOTTED,
              lambda n: ("POST", NOPE, {"name": n})),
    NameRoute("PUT /instances/:id/snapshots/", "snapshot", DOTTED,
              lambda n: ("PUT", NOPE, {"target": n})),
    NameRoute("GET /instances/:id/snapshots/:name", "snapshot", DOTTED,
              lambda n: ("GET", NOPE + _path(n), None), in_path=True),
    NameRoute("DELETE /instances/:id/snapshots/:name", "snapshot", DOTTED,
              lambda n: ("DELETE", NOPE + _path(n), None), in_path=True),
)  # fmt: skip

#: Characters a label may not hold, by category; the oracle below reads categories itself.
INVISIBLE = ("Cc", "Cf", "Cs", "Zl", "Zp")
CUT = 64


def quoted(name: str) -> str:
    """The oracle: how a refusal quotes ``name`` (first 64 characters, invisible ones escaped)."""
    head = "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in INVISIBLE else c
        for c in name[:CUT]
    )
    return head + ("…" if len(name) > CUT else "")


def allowed(rule: Rule, char: str) -> bool:
    if rule is LABEL:
        return unicodedata.category(char) not in INVISIBLE
    return char.isascii() and (char.isalnum() or char in rule.value)


def as_read(name: str) -> str:
    """``name`` as a JSON body's escapes bring it (as Go reads them): surrogate pairs joined,
    a lone surrogate U+FFFD."""
    return name.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def expected(route: NameRoute, sent: str) -> str:
    """The refusal the route owes ``sent`` (a name its rule refuses): Core's character check
    first for the names Core qualified, the length first for labels."""
    name = as_read(sent)
    illegal = next((c for c in name if not allowed(route.rule, c)), None)
    if illegal is None or (route.rule is LABEL and len(name) > 255):
        reason = "longer than 255 characters"
    else:
        reason = f"illegal char '{quoted(illegal)}'"
    return f"invalid {route.kind} name '{quoted(name)}': {reason}"


def by_title(title: str) -> NameRoute:
    return next(route for route in ROUTES if route.title == title)


class NameRouteCase(TestCase):
    """The API over a real store holding a guest, images, a template and a policy group."""

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir(parents=True)
        self.store = await Store.open(data_dir, reactor)
        self.addCleanup(self.store.close)
        await self.store.commit(
            UnitOfWork.of(
                Insert(m.ComputeCell("cell-a", pool="default")),
                Insert(m.Instance(id=GUEST, name="vm1", owner="alice", group="team",
                                  pool="default", cell="cell-a", cores=1, memory=GiB,
                                  disks=(GiB,))),
                Insert(m.DiskImage(id=DISK, name="base", owner="admin", group="ops")),
                Insert(m.MediaImage(id=ISO, name="install", owner="admin", group="ops")),
                Insert(m.SystemTemplate(id=TEMPLATE, name="small", admin="root",
                                        created_time="2024-05-01 02:11:12",
                                        modified_time="2024-05-01 02:11:12",
                                        operating_system="linux", disk="scsi",
                                        network="virtio", display="vga", control="vnc")),
                Insert(m.SecurityPolicyGroup(id=POLICY, name="web", user="admin",
                                             group="ops")),
            )
        )  # fmt: skip
        self.clock = Clock()
        self.clock.advance(NOW)
        self.ops = Operations(self.store, self.clock)
        self.client = APIClient(
            build_api_resource(self.ops, TEST_CREDENTIALS, self.clock), self.clock
        )

    def refused(self, request: Request) -> str:
        """The message of the refusal of ``request``: given at once (a refusal waits on
        nothing), an error envelope, and nothing changed."""
        before = self.ops.context.revision()
        method, path, body = request
        answer = self.successResultOf(self.client.request(method, path, body))
        document = answer.envelope()
        self.assertEqual(
            (answer.status, document["error_code"], document["data"]), (200, 500, {}), document
        )
        self.assertEqual(self.ops.context.revision(), before, request[:2])
        return str(document["message"])

    def refusal(self, route: NameRoute, name: str) -> str:
        """The message of the route's refusal of ``name``."""
        return self.refused(route.request(name))


A64 = "a" * 64


class TableTests(NameRouteCase):
    def test_the_reported_cases(self) -> None:
        """The four answers exploratory QA found in the model's words, now in the route's."""
        for title, name, message in (
            ("POST /compute_pools/:pool", "a" * 300,
             f"invalid pool name '{A64}…': longer than 255 characters"),
            ("POST /compute_pools/:pool", "p 1", "invalid pool name 'p 1': illegal char ' '"),
            ("POST /guests/ name", "a" * 300,
             f"invalid guest name '{A64}…': longer than 255 characters"),
            ("POST /disk_images/ name", "bad name",
             "invalid image name 'bad name': illegal char ' '"),
            ("POST /templates/ name", "t\u202eevil",
             "invalid template name 't\\u202eevil': illegal char '\\u202e'"),
        ):  # fmt: skip
            self.assertEqual(self.refusal(by_title(title), name), message, title)

    def test_every_route_refuses_a_name_too_long_quoting_only_its_cut(self) -> None:
        for route in ROUTES:
            for size in (256, 10_000 if route.in_path else 200_000):
                message = self.refusal(route, "a" * size)
                self.assertEqual(
                    message,
                    f"invalid {route.kind} name '{A64}…': longer than 255 characters",
                    route.title,
                )

    def test_every_route_refuses_a_bad_character_in_core_words(self) -> None:
        for route in ROUTES:
            if route.rule is LABEL:
                cases = [
                    ("t\u202eevil", "t\\u202eevil", "\\u202e"),  # right-to-left override
                    ("zero\u200bwidth", "zero\\u200bwidth", "\\u200b"),
                    ("bell\x07", "bell\\x07", "\\x07"),
                    ("line\u2028break", "line\\u2028break", "\\u2028"),
                    ("\ufeffbom", "\\ufeffbom", "\\ufeff"),
                ]
            else:
                cases = [
                    ("a b", "a b", " "),
                    ("caf\u00e9", "caf\u00e9", "\u00e9"),  # Core's \w is ASCII
                    ("vm\u202e1", "vm\\u202e1", "\\u202e"),
                    ("tab\t", "tab\\t", "\\t"),
                ]
                if not route.in_path:
                    cases.append(("a/b", "a/b", "/"))
                if route.rule is QUALIFIED:
                    cases.append(("a.b", "a.b", "."))
            if not route.in_path and route.rule is not LABEL:
                # A lone surrogate (JSON "\ud800") reads as U+FFFD, as in Go: not a character
                # Core qualified (kept raw, the envelope could not be encoded: "internal error").
                cases.append(("x\ud800y", "x\ufffdy", "\ufffd"))
            for name, shown, char in cases:
                self.assertEqual(
                    self.refusal(route, name),
                    f"invalid {route.kind} name '{shown}': illegal char '{char}'",
                    route.title,
                )

    def test_which_check_comes_first_in_a_long_name_with_a_bad_character(self) -> None:
        """Core checked characters (and had no limit): its refusal stays for the names it
        qualified. Labels Core never checked: the length goes first there."""
        for route in ROUTES:
            bad = "\u202e" if route.rule is LABEL else " "
            message = self.refusal(route, "a" * 300 + bad)
            reason = (
                "longer than 255 characters"
                if route.rule is LABEL
                else f"illegal char '{quoted(bad)}'"
            )
            self.assertEqual(message, f"invalid {route.kind} name '{A64}…': {reason}")

    def test_a_batch_says_which_member_name_is_too_long(self) -> None:
        route = NameRoute(
            "POST /batch/create_guest/ name_prefix",
            "guest",
            QUALIFIED,
            lambda n: ("POST", "/batch/create_guest/", _batch(name_prefix=n)),
        )
        self.assertEqual(
            self.refusal(route, "a" * 254),  # the second member is a…a_1: 256 characters
            f"invalid guest name '{A64}…': longer than 255 characters",
        )
        # A bad character keeps Core's own words for prefixes.
        self.assertEqual(self.refusal(route, "a b"), "only '0~9a~Z_-' allowed in prefix")


class BoundaryTests(NameRouteCase):
    async def test_255_characters_and_visible_non_ascii_labels_pass_the_name_check(self) -> None:
        """What the checks allow reaches the route's next check (or succeeds)."""
        for route in ROUTES:
            names = ["a" * 255]
            if route.rule is LABEL:
                names += ["caf\u00e9 \u00e0 la carte", "\u05e9\u05dc\u05d5\u05dd"]
            for name in names:
                method, path, body = route.request(name)
                answer = (await self.client.request(method, path, body)).envelope()
                self.assertFalse(
                    str(answer["message"]).startswith(f"invalid {route.kind} name"),
                    (route.title, answer),
                )


def _bad_names(rule: Rule, in_path: bool) -> st.SearchStrategy[str]:
    """Names ``rule`` refuses: too long, or holding a character it does not allow."""
    # A path is UTF-8 and split at "/": neither a lone surrogate nor "/" can be one's name.
    # A JSON body can hold both; a lone surrogate reads as U+FFFD there (as in Go), which a
    # label may hold and a qualified name may not.
    if rule is LABEL:
        good = st.characters(
            blacklist_categories=INVISIBLE, blacklist_characters="/" if in_path else ""
        )
        bad = st.characters(whitelist_categories=("Cc", "Cf", "Zl", "Zp"))
    else:
        good = st.sampled_from("abcXYZ019" + rule.value)
        bad = st.characters(
            blacklist_categories=("Cs",) if in_path else (),
            blacklist_characters="/" if in_path else "",
        ).filter(lambda c: not allowed(rule, c))
    too_long = st.text(good, min_size=256, max_size=1_000)
    with_bad = st.builds(
        lambda before, char, after: before + char + after,
        st.text(good, max_size=300),
        bad,
        st.text(good, max_size=20),
    )
    return st.one_of(too_long, with_bad)


@st.composite
def route_and_bad_name(draw: st.DrawFn) -> tuple[NameRoute, str]:
    route = draw(st.sampled_from(ROUTES))
    return route, draw(_bad_names(route.rule, route.in_path))


class PropertyTests(NameRouteCase):
    @given(route_and_bad_name())
    def test_any_bad_name_is_refused_in_the_route_words_and_cut(
        self, case: tuple[NameRoute, str]
    ) -> None:
        route, name = case
        message = self.refusal(route, name)
        self.assertEqual(message, expected(route, name), route.title)
        # The cut at most, each character escaped at most as \U0010ffff, and the character.
        self.assertLessEqual(len(message), len(route.kind) + CUT * 10 + 50)


class ModelGuardTests(NameRouteCase):
    def test_what_only_the_model_checks_is_refused_quoting_a_cut(self) -> None:
        """The model stays the last guard (storage hosts, image tags): its refusal is still
        a refusal, and quotes a cut of the value too, escaped."""
        rule = "1-255 characters without control or format characters"
        host = {"type": "nfs", "host": "h" * 100_000, "target": "/t"}
        self.assertEqual(
            self.refused(("POST", "/storage_pools/s", host)),
            f"'host' must be {rule}, not '{'h' * 64}…'",
        )
        tags = _image(tags=["ok", "t\u202e" + "x" * 100])
        self.assertEqual(
            self.refused(("POST", "/media_images/", tags)),
            f"'tags' must be {rule}, not 't\\u202e{'x' * 62}…'",
        )
