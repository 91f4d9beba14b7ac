"""What route modules are written with: families, typed body readers, ``empty``."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from nanocore.api.auth import Variant
from nanocore.api.decode import Body, Field, Kind
from nanocore.api.families import FAMILIES, all_routes
from nanocore.api.route import Call, Family, Fields, empty


class FamilyTests(SynchronousTestCase):
    def test_routes_are_declared_on_their_handlers_in_order(self) -> None:
        things: Family[object] = Family("things")

        @things.route("GET", "/things/", "List things", cacheable=True)
        def listing(ops: object, call: Call) -> object:
            return []

        @things.route("POST", "/things/:id", "Create a thing", auth=None, query=("x",))
        def create(ops: object, call: Call) -> object:
            return ""

        self.assertEqual(listing(None, Call({}, {}, Fields({}))), [])
        routes = things.routes
        self.assertEqual([(r.method, r.path) for r in routes], [
            ("GET", "/things/"), ("POST", "/things/:id"),
        ])  # fmt: skip
        self.assertEqual({r.tag for r in routes}, {"things"})
        self.assertIs(routes[0].handler, listing)
        self.assertEqual(
            (routes[0].cacheable, routes[0].auth, routes[1].auth, routes[1].query),
            (True, Variant.REQUEST, None, ("x",)),
        )
        self.assertEqual(routes[1].full_path, "/api/v1/things/:id")

    def test_the_table_holds_every_family_once_and_the_document(self) -> None:
        table = all_routes()
        declared = [route for family in FAMILIES for route in family.routes]
        self.assertEqual([r for r in table if r.path != "/openapi.json"], declared)
        self.assertEqual([r.path for r in table].count("/openapi.json"), 1)


class FieldsTests(SynchronousTestCase):
    BODY = Body(
        (
            Field("name"),
            Field("enabled", Kind.BOOL),
            Field("cores", Kind.UINT),
            Field("ratio", Kind.FLOAT),
            Field("dns", Kind.STRING_LIST),
            Field("ports", Kind.UINT_LIST),
            Field("qos", Kind.OBJECT, body=Body((Field("cpu"),), name="qos")),
        )
    )

    def test_each_kind_is_read_with_its_type(self) -> None:
        fields = Fields(
            self.BODY.decode(
                b'{"name": "a", "enabled": true, "cores": 2, "ratio": 0.5, "dns": ["x"],'
                b' "ports": [1, 2], "qos": {"cpu": "high"}}'
            )
        )
        self.assertEqual(fields.text("name"), "a")
        self.assertIs(fields.flag("enabled"), True)
        self.assertEqual(fields.integer("cores"), 2)
        self.assertEqual(fields.number("ratio"), 0.5)
        self.assertEqual(fields.texts("dns"), ("x",))
        self.assertEqual(fields.integers("ports"), (1, 2))
        nested = fields.fields("qos")
        assert nested is not None
        self.assertEqual(nested.text("cpu"), "high")
        self.assertEqual(dict(fields)["name"], "a")
        self.assertEqual(len(fields), 7)

    def test_an_absent_object_is_none(self) -> None:
        self.assertIsNone(Fields(self.BODY.decode(b"{}")).fields("qos"))

    def test_a_reader_that_disagrees_with_the_declaration_is_a_bug_not_a_value(self) -> None:
        fields = Fields(self.BODY.decode(b'{"cores": 2}'))
        with self.assertRaises(TypeError) as raised:
            fields.text("cores")
        self.assertEqual(str(raised.exception), "body field cores is int, not str")
        self.assertRaises(KeyError, fields.text, "undeclared")


class EmptyTests(SynchronousTestCase):
    def test_nothing_to_return_once_committed(self) -> None:
        committed: Deferred[None] = Deferred()
        answer = empty(committed)
        self.assertNoResult(answer)
        committed.callback(None)
        self.assertEqual(self.successResultOf(answer), "")

    def test_a_failed_commit_stays_a_failure(self) -> None:
        answer = empty(succeed(None).addCallback(lambda _: 1 / 0))
        self.failureResultOf(answer, ZeroDivisionError)
