"""`nanocore call`: options, signing with api.cfg's credential, output and exit status.

The API side is the real signed API over a real store, in memory (StubTreq); the real-process
call against a running nanocore is in test_cli and test_readme.
"""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanocore import call, config
from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.console import Console
from nanocore.operations.core import Operations
from nanocore.store import Store

NOW = 1_700_000_000.0
(TESTER, TESTER_KEY), *_ = TEST_CREDENTIALS.items()


def parsed(*argv: str) -> call.CallOptions:
    options = call.CallOptions()
    options.parseOptions(list(argv))
    return options


def write_config(config_dir: Path, port: int = 5850) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    credentials = [{"id": TESTER, "key": TESTER_KEY}, {"id": "stranger", "key": "unknown-key"}]
    documents = {
        config.DOMAIN_FILE: {"listen_address": "127.0.0.1"},
        config.API_FILE: {"port": port, "credentials": credentials},
    }
    for name, document in documents.items():
        (config_dir / name).write_text(json.dumps(document))


class OptionsTests(SynchronousTestCase):
    def test_method_path_body_and_options_in_any_order(self) -> None:
        options = parsed("post", "/compute_pools/p1", '{"network": ""}', "--id", "x")
        self.assertEqual(
            (options["method"], options["path"], options["body"], options["id"]),
            ("POST", "/compute_pools/p1", '{"network": ""}', "x"),
        )
        self.assertEqual(parsed("GET", "/compute_pools/")["timeout"], call.DEFAULT_TIMEOUT)

    def test_usage_errors(self) -> None:
        for argv, said in [
            (["PATCH", "/x"], "METHOD must be one of GET, POST, PUT, DELETE"),
            (["GET", "/x", "{}"], "a GET request takes no body"),
            (["GET", ""], "PATH must not be empty"),
            (["GET", "/x", "--timeout", "0"], "--timeout must be positive"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                parsed(*argv)
            self.assertIn(said, str(caught.exception))
        self.assertRaises(usage.UsageError, parsed, "GET")

    def test_paths_of_the_reference_get_the_api_prefix(self) -> None:
        self.assertEqual(call.api_path("/compute_pools/"), "/api/v1/compute_pools/")
        self.assertEqual(call.api_path("compute_pools/"), "/api/v1/compute_pools/")
        self.assertEqual(call.api_path("/api/v1/"), "/api/v1/")


class CallTests(TestCase):
    """`call` against the real API resource over a real store, in memory."""

    async def setUp(self) -> None:  # type: ignore[override]
        root = Path(self.mktemp()).absolute()
        (root / "data").mkdir(parents=True)
        self.store = await Store.open(root / "data", reactor)
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.clock.advance(NOW)
        resource = build_api_resource(
            Operations(self.store, self.clock), TEST_CREDENTIALS, self.clock
        )
        self.http = APIClient(resource, self.clock).treq
        self.config_dir = root / "config"
        write_config(self.config_dir)

    async def run_call(self, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        options = parsed(*argv, f"--config-dir={self.config_dir}")
        code = await call.call(
            self.clock, options, Console(out, err), io.BytesIO(stdin), http=self.http
        )
        self.clock.advance(0.001)  # the next call signs with another Nano-Date
        return code, out.getvalue(), err.getvalue()

    async def test_prints_the_answer_indented_and_exits_0(self) -> None:
        code, out, err = await self.run_call("GET", "/compute_pools/")
        self.assertEqual((code, err), (call.EXIT_OK, ""))
        document = json.loads(out)
        self.assertEqual([pool["name"] for pool in document["data"]], ["default"])
        self.assertEqual(out, json.dumps(document, indent=2) + "\n")

    async def test_a_body_from_the_argument_or_stdin(self) -> None:
        code, _out, err = await self.run_call("POST", "/compute_pools/p1", "{}")
        self.assertEqual(code, call.EXIT_OK, err)
        code, _out, err = await self.run_call("POST", "/compute_pools/p2", "-", stdin=b"{}")
        self.assertEqual(code, call.EXIT_OK, err)
        self.assertEqual(sorted(self.store.view.compute_pools), ["default", "p1", "p2"])

    async def test_an_error_envelope_exits_1(self) -> None:
        code, out, _err = await self.run_call("POST", "/compute_pools/default")
        self.assertEqual(code, call.EXIT_REFUSED)
        self.assertEqual(json.loads(out)["message"], "compute pool 'default' already exists")

    async def test_the_credential_is_chosen_by_id(self) -> None:
        code, out, _err = await self.run_call("GET", "/compute_pools/", "--id", "stranger")
        self.assertEqual(code, call.EXIT_REFUSED)
        self.assertNotEqual(json.loads(out)["error_code"], 0)
        code, _out, err = await self.run_call("GET", "/compute_pools/", "--id", "nobody")
        self.assertEqual(code, call.EXIT_NO_ANSWER)
        self.assertIn("no credential 'nobody'", err)
        self.assertIn(f"it has {TESTER}, stranger", err)
        self.assertNotIn(TESTER_KEY, err)

    async def test_a_body_that_is_not_json_is_never_sent(self) -> None:
        code, out, err = await self.run_call("POST", "/compute_pools/p1", "{name: p1}")
        self.assertEqual((code, out), (call.EXIT_NO_ANSWER, ""))
        self.assertIn("the body is not JSON", err)
        self.assertEqual(sorted(self.store.view.compute_pools), ["default"])

    async def test_a_deep_body_is_refused_before_it_is_sent(self) -> None:
        deep = "[" * 100_000 + "]" * 100_000
        code, out, err = await self.run_call("POST", "/compute_pools/p1", deep)
        self.assertEqual((code, out), (call.EXIT_NO_ANSWER, ""))
        self.assertIn("the body is not JSON: nested deeper than 64 levels", err)

    async def test_a_redirect_is_said_not_followed(self) -> None:
        code, _out, err = await self.run_call("GET", "/compute_pools")
        self.assertEqual(code, call.EXIT_NO_ANSWER)
        self.assertIn("HTTP 301: the API moved this path to /api/v1/compute_pools/", err)

    async def test_a_document_that_is_not_an_envelope(self) -> None:
        code, out, _err = await self.run_call("GET", "/api/v1/openapi.json")
        self.assertEqual(code, call.EXIT_OK)
        self.assertIn("openapi", json.loads(out))

    async def test_a_missing_config_is_a_config_error(self) -> None:
        (self.config_dir / config.API_FILE).unlink()
        code, _out, err = await self.run_call("GET", "/compute_pools/")
        self.assertEqual(code, call.EXIT_NO_ANSWER)
        self.assertIn(f"config error: {self.config_dir / config.API_FILE}", err)


class ShowTests(SynchronousTestCase):
    def shown(self, status: int, content: bytes) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = call.show(Console(out, err), call.Answer(status, "", content))
        return code, out.getvalue(), err.getvalue()

    def test_an_answer_that_is_not_json(self) -> None:
        code, out, err = self.shown(405, b"Method Not Allowed")
        self.assertEqual((code, out), (call.EXIT_NO_ANSWER, "Method Not Allowed\n"))
        self.assertIn("HTTP 405: the answer is not JSON", err)

    def test_a_deep_answer_is_not_json_rather_than_a_traceback(self) -> None:
        code, _out, err = self.shown(200, b"[" * 100_000 + b"]" * 100_000)
        self.assertEqual(code, call.EXIT_NO_ANSWER)
        self.assertIn("HTTP 200: the answer is not JSON", err)

    def test_json_that_is_no_envelope_follows_the_http_status(self) -> None:
        self.assertEqual(self.shown(200, b"[1]")[0], call.EXIT_OK)
        self.assertEqual(self.shown(500, b"[1]")[0], call.EXIT_NO_ANSWER)


class SilentServer:
    """Stands for treq against a server that accepts the request and never answers."""

    def request(self, *args: object, **kwargs: object) -> Deferred[object]:
        return Deferred()


class TransportTests(TestCase):
    def test_no_answer_within_the_timeout_exits_2(self) -> None:
        config_dir = Path(self.mktemp())
        write_config(config_dir)
        clock, out, err = Clock(), io.StringIO(), io.StringIO()
        options = parsed("GET", "/compute_pools/", "--timeout=5", f"--config-dir={config_dir}")
        done = Deferred.fromCoroutine(
            call.call(clock, options, Console(out, err), io.BytesIO(), http=SilentServer())
        )
        clock.advance(4.9)
        self.assertNoResult(done)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(done), call.EXIT_NO_ANSWER)
        self.assertIn(
            "no answer from http://127.0.0.1:5850/api/v1/compute_pools/ within 5 s", err.getvalue()
        )

    async def test_nothing_listening_exits_2_saying_so(self) -> None:
        with socket.socket() as probe:  # a loopback port that is closed again at once
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config_dir = Path(self.mktemp())
        write_config(config_dir, port)
        out, err = io.StringIO(), io.StringIO()
        options = parsed("GET", "/compute_pools/", f"--config-dir={config_dir}")
        code = await call.call(reactor, options, Console(out, err), io.BytesIO())
        self.assertEqual((code, out.getvalue()), (call.EXIT_NO_ANSWER, ""))
        self.assertIn(
            f"cannot reach http://127.0.0.1:{port}/api/v1/compute_pools/", err.getvalue()
        )
        self.assertIn("is nanocore running?", err.getvalue())
