"""Loading, validating and generating domain.cfg, api.cfg and image.cfg."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from nanocore import config, gojson
from nanocore.config import (
    APIConfig,
    ConfigError,
    Credential,
    DomainConfig,
    ImageConfig,
    ensure_config,
    load_api,
    load_config,
    load_domain,
    load_image,
)

# The example files of the Nano Core 1.4.0 README, byte for byte (one-space indent, no
# trailing newline), for a Core working on 192.168.1.31.
README_DOMAIN = """{
 "domain": "nano",
 "group_address": "224.0.0.226",
 "group_port": 5599,
 "listen_address": "192.168.1.31"
}"""
README_API = """{
 "port": 5850,
 "credentials": [
  {
   "id": "dummyID",
   "key": "ThisIsAKeyPlaceHolder_ChangeToYourContent"
  }
 ]
}"""
README_IMAGE = """{
 "cert_file": "/opt/nano/core/cert/nano_image.crt.pem",
 "key_file": "/opt/nano/core/cert/nano_image.key.pem"
}"""

GOOD_DOMAIN: dict[str, Any] = {
    "domain": "nano",
    "group_address": "224.0.0.226",
    "group_port": 5599,
    "listen_address": "127.0.0.1",
    "timeout": 10,
}
GOOD_API: dict[str, Any] = {"port": 5850, "credentials": [{"id": "a", "key": "secret-a"}]}
GOOD_IMAGE: dict[str, Any] = {"cert_file": "cert/x.crt.pem", "key_file": "cert/x.key.pem"}

MISSING = object()


class ConfigTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def write(self, name: str, content: str | dict[str, Any]) -> Path:
        path = self.directory / name
        text = content if isinstance(content, str) else json.dumps(content)
        path.write_text(text, encoding="utf-8")
        return path

    def warnings(self) -> list[str]:
        return [formatEvent(event) for event in self.events if event["log_level"] == LogLevel.warn]

    def assertRefused(
        self, loader: Any, name: str, document: dict[str, Any], key: str, found: str
    ) -> ConfigError:
        """`loader` refuses `document` with an error naming the file, `key` and `found`."""
        path = self.write(name, document)
        with self.assertRaises(ConfigError, msg=f"{key} = {found} accepted") as caught:
            loader(path)
        error = caught.exception
        self.assertEqual((error.path, error.key, error.found), (path, key, found), str(error))
        self.assertTrue(error.expected, str(error))
        message = str(error)
        for part in (str(path), f'"{key}"', found, error.expected):
            self.assertIn(part, message)
        return error


def replaced(document: dict[str, Any], key: str, value: object) -> dict[str, Any]:
    changed = dict(document)
    if value is MISSING:
        del changed[key]
    else:
        changed[key] = value
    return changed


class ReadmeExampleTests(ConfigTestCase):
    def test_the_original_examples_load_unchanged(self) -> None:
        self.write(config.DOMAIN_FILE, README_DOMAIN)
        self.write(config.API_FILE, README_API)
        self.write(config.IMAGE_FILE, README_IMAGE)
        loaded = load_config(self.directory)
        self.assertEqual(
            loaded.domain,
            DomainConfig(
                domain="nano",
                group_address="224.0.0.226",
                group_port=5599,
                listen_address="192.168.1.31",
                timeout=10,
            ),
        )
        self.assertEqual(
            loaded.api,
            APIConfig(
                port=5850,
                credentials=(Credential("dummyID", "ThisIsAKeyPlaceHolder_ChangeToYourContent"),),
            ),
        )
        self.assertEqual(
            loaded.image,
            ImageConfig(
                cert_file="/opt/nano/core/cert/nano_image.crt.pem",
                key_file="/opt/nano/core/cert/nano_image.key.pem",
            ),
        )

    def test_the_placeholder_key_is_loaded_with_a_warning(self) -> None:
        load_api(self.write(config.API_FILE, README_API))
        [warning] = self.warnings()
        self.assertIn("placeholder key", warning)
        self.assertIn("dummyID", warning)
        self.assertNotIn(config.PLACEHOLDER_KEY, warning)


class DomainTests(ConfigTestCase):
    def test_defaults_apply_to_absent_keys(self) -> None:
        loaded = load_domain(self.write(config.DOMAIN_FILE, {"listen_address": "10.1.2.3"}))
        self.assertEqual(loaded, DomainConfig(listen_address="10.1.2.3"))
        self.assertEqual(
            (loaded.domain, loaded.group_address, loaded.group_port, loaded.timeout),
            ("nano", "224.0.0.226", 5599, 10),
        )

    def test_timeout_up_to_gos_int_is_taken(self) -> None:
        """The bound is Go's, not a new one: the largest int the original read is still read."""
        path = self.write(config.DOMAIN_FILE, replaced(GOOD_DOMAIN, "timeout", 2**63 - 1))
        self.assertEqual(load_domain(path).timeout, 2**63 - 1)

    def test_zero_timeout_means_the_default(self) -> None:
        """The original applies the timeout only when it is positive."""
        path = self.write(config.DOMAIN_FILE, replaced(GOOD_DOMAIN, "timeout", 0))
        self.assertEqual(load_domain(path).timeout, 10)

    def test_keys_match_case_insensitively_like_go(self) -> None:
        document = {"Listen_Address": "127.0.0.2", "DOMAIN": "lab", "group_port": 6000}
        loaded = load_domain(self.write(config.DOMAIN_FILE, document))
        self.assertEqual((loaded.listen_address, loaded.domain), ("127.0.0.2", "lab"))
        self.assertEqual(self.warnings(), [])

    def test_unknown_keys_are_warned_about_not_fatal(self) -> None:
        document = dict(GOOD_DOMAIN, colour="blue")
        loaded = load_domain(self.write(config.DOMAIN_FILE, document))
        self.assertEqual(loaded.listen_address, "127.0.0.1")
        [warning] = self.warnings()
        self.assertIn("'colour'", warning)
        self.assertIn(config.DOMAIN_FILE, warning)

    def test_each_bad_value_is_refused_naming_the_key(self) -> None:
        cases: list[tuple[str, object, str]] = [
            ("domain", "", '""'),
            ("domain", 7, "7"),
            ("domain", None, "null"),
            ("domain", "x" * 256, '"' + "x" * 56 + "..."),
            ("domain", "nano\u0000", '"nano\\u0000"'),
            ("group_address", "224.0.0", '"224.0.0"'),
            ("group_address", "192.168.1.1", '"192.168.1.1"'),
            ("group_address", "ff02::1", '"ff02::1"'),
            ("group_address", 224, "224"),
            ("group_port", "5599", '"5599"'),
            ("group_port", 0, "0"),
            ("group_port", 65536, "65536"),
            ("group_port", 5599.0, "5599.0"),
            ("group_port", True, "true"),
            ("listen_address", MISSING, "nothing (the key is missing)"),
            ("listen_address", "", '""'),
            ("listen_address", "256.1.1.1", '"256.1.1.1"'),
            ("listen_address", "my-host", '"my-host"'),
            ("listen_address", "0.0.0.0", '"0.0.0.0"'),
            ("listen_address", "224.0.0.226", '"224.0.0.226"'),
            ("listen_address", "::1", '"::1"'),
            ("listen_address", ["127.0.0.1"], '["127.0.0.1"]'),
            ("timeout", -1, "-1"),
            ("timeout", "10", '"10"'),
            ("timeout", 1.5, "1.5"),
            # Go's decoder refuses a number its 64-bit int cannot hold (QA2 finding 10).
            ("timeout", 2**63, "9223372036854775808"),
            ("timeout", 99999999999999999999, "99999999999999999999"),
        ]
        for key, value, found in cases:
            document = replaced(GOOD_DOMAIN, key, value)
            self.assertRefused(load_domain, config.DOMAIN_FILE, document, key, found)


class APITests(ConfigTestCase):
    def test_port_defaults_to_5850(self) -> None:
        document = {"credentials": [{"id": "a", "key": "k"}]}
        loaded = load_api(self.write(config.API_FILE, document))
        self.assertEqual(loaded, APIConfig(port=5850, credentials=(Credential("a", "k"),)))

    def test_port_0_asks_for_any_free_port(self) -> None:
        document = {"port": 0, "credentials": [{"id": "a", "key": "k"}]}
        self.assertEqual(load_api(self.write(config.API_FILE, document)).port, 0)

    def test_credentials_keep_their_order_and_map_ids_to_keys(self) -> None:
        document = {
            "port": 9000,
            "credentials": [{"id": "b", "key": "2"}, {"id": "a", "key": "1"}],
        }
        loaded = load_api(self.write(config.API_FILE, document))
        self.assertEqual([credential.id for credential in loaded.credentials], ["b", "a"])
        self.assertEqual(loaded.credential_keys(), {"b": "2", "a": "1"})

    def test_a_key_is_never_shown(self) -> None:
        credential = Credential("a", "very-secret")
        self.assertNotIn("very-secret", repr(credential))
        self.assertNotIn("very-secret", repr(APIConfig(credentials=(credential,))))

    def test_unknown_keys_inside_a_credential_are_warned_about(self) -> None:
        document = {"credentials": [{"id": "a", "key": "k", "scope": "all"}]}
        load_api(self.write(config.API_FILE, document))
        [warning] = self.warnings()
        self.assertIn("credentials[0].scope", warning)

    def test_each_bad_value_is_refused_naming_the_key(self) -> None:
        port_cases: list[tuple[str, object, str]] = [
            ("port", 65536, "65536"),
            ("port", -5850, "-5850"),
            ("port", "5850", '"5850"'),
            ("port", None, "null"),
            ("credentials", MISSING, "nothing (the key is missing)"),
            ("credentials", [], "[]"),
            ("credentials", None, "null"),
            ("credentials", {"id": "a", "key": "k"}, '{"id": "a", "key": "k"}'),
        ]
        for key, value, found in port_cases:
            document = replaced(GOOD_API, key, value)
            self.assertRefused(load_api, config.API_FILE, document, key, found)

    def test_empty_or_missing_credential_fields_are_refused(self) -> None:
        cases: list[tuple[object, str, str]] = [
            ({"id": "", "key": "k"}, "credentials[0].id", '""'),
            ({"key": "k"}, "credentials[0].id", "nothing (the key is missing)"),
            ({"id": 3, "key": "k"}, "credentials[0].id", "3"),
            # No request could ever use these (QA pass 20).
            ({"id": "a/b", "key": "k"}, "credentials[0].id", '"a/b"'),
            ({"id": "a b", "key": "k"}, "credentials[0].id", '"a b"'),
            ({"id": "a\u0000", "key": "k"}, "credentials[0].id", '"a\\u0000"'),
            ({"id": "a", "key": ""}, "credentials[0].key", '""'),
            ({"id": "a"}, "credentials[0].key", "nothing (the key is missing)"),
            ({"id": "a", "key": 12345}, "credentials[0].key", "a JSON number"),
            ("a:k", "credentials[0]", '"a:k"'),
        ]
        for entry, key, found in cases:
            document = {"port": 5850, "credentials": [entry]}
            self.assertRefused(load_api, config.API_FILE, document, key, found)

    def test_a_bad_key_is_described_without_echoing_it(self) -> None:
        document = {"credentials": [{"id": "a", "key": ["hunter2"]}]}
        error = self.assertRefused(
            load_api, config.API_FILE, document, "credentials[0].key", "a JSON array"
        )
        self.assertNotIn("hunter2", str(error))

    def test_duplicate_ids_are_refused(self) -> None:
        document = {"credentials": [{"id": "a", "key": "1"}, {"id": "a", "key": "2"}]}
        error = self.assertRefused(load_api, config.API_FILE, document, "credentials[1].id", '"a"')
        self.assertIn("only once", error.expected)


class ImageTests(ConfigTestCase):
    def test_both_paths_are_required_non_empty_strings(self) -> None:
        cases: list[tuple[str, object, str]] = [
            ("cert_file", MISSING, "nothing (the key is missing)"),
            ("cert_file", "", '""'),
            ("key_file", MISSING, "nothing (the key is missing)"),
            ("key_file", 1, "1"),
        ]
        for key, value, found in cases:
            document = replaced(GOOD_IMAGE, key, value)
            self.assertRefused(load_image, config.IMAGE_FILE, document, key, found)

    def test_paths_are_kept_as_written(self) -> None:
        loaded = load_image(self.write(config.IMAGE_FILE, GOOD_IMAGE))
        self.assertEqual(
            loaded, ImageConfig(cert_file="cert/x.crt.pem", key_file="cert/x.key.pem")
        )


class FileLevelTests(ConfigTestCase):
    def refused(self, path: Path) -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            load_domain(path)
        self.assertEqual(caught.exception.path, path)
        self.assertIn(str(path), str(caught.exception))
        return caught.exception

    def test_missing_file(self) -> None:
        error = self.refused(self.directory / config.DOMAIN_FILE)
        self.assertEqual(error.found, "no such file")

    def test_malformed_json_says_where(self) -> None:
        error = self.refused(self.write(config.DOMAIN_FILE, '{"listen_address": "127.0.0.1",}'))
        self.assertIn("invalid JSON", error.found)
        self.assertIn("line 1", error.found)

    def test_not_an_object(self) -> None:
        error = self.refused(self.write(config.DOMAIN_FILE, '["127.0.0.1"]'))
        self.assertEqual((error.found, error.expected), ("a JSON array", "a JSON object"))

    def test_non_json_constants(self) -> None:
        error = self.refused(self.write(config.DOMAIN_FILE, '{"timeout": NaN}'))
        self.assertIn("NaN", error.found)

    def test_over_deep_document(self) -> None:
        """A clear ConfigError, never a RecursionError, however deep (issue 14 point 4)."""
        for depth in (gojson.MAX_DEPTH, 1_000, 100_000):
            nested = "[" * depth + "]" * depth
            path = self.write(
                config.DOMAIN_FILE, f'{{"listen_address": "127.0.0.1", "x": {nested}}}'
            )
            error = self.refused(path)
            self.assertIn(f"nested deeper than {gojson.MAX_DEPTH} levels", error.found)
            self.assertEqual(error.expected, "a JSON object")

    def test_not_utf8(self) -> None:
        path = self.directory / config.DOMAIN_FILE
        path.write_bytes(b'{"domain": "\xff"}')
        self.assertIn("not UTF-8", self.refused(path).found)

    def test_oversized_file_is_refused_unread(self) -> None:
        path = self.directory / config.DOMAIN_FILE
        path.write_bytes(b" " * (config.MAX_CONFIG_BYTES + 1))
        self.assertIn("more than", self.refused(path).found)

    def test_first_fault_stops_loading_of_the_whole_config(self) -> None:
        self.write(config.DOMAIN_FILE, GOOD_DOMAIN)
        self.write(config.API_FILE, replaced(GOOD_API, "port", 70000))
        self.write(config.IMAGE_FILE, GOOD_IMAGE)
        with self.assertRaises(ConfigError) as caught:
            load_config(self.directory)
        self.assertEqual(caught.exception.path, self.directory / config.API_FILE)
        self.assertEqual(caught.exception.key, "port")


class EnsureConfigTests(ConfigTestCase):
    def test_writes_safe_defaults_with_mode_0600(self) -> None:
        config_dir = self.directory / "config"
        cert_dir = self.directory / "cert"
        written = ensure_config(config_dir, cert_dir=cert_dir)
        names = [config.DOMAIN_FILE, config.API_FILE, config.IMAGE_FILE]
        self.assertEqual(written, [config_dir / name for name in names])
        for path in written:
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, path)
        self.assertEqual(stat.S_IMODE(config_dir.stat().st_mode), 0o700)
        loaded = load_config(config_dir)
        self.assertEqual(loaded.domain, DomainConfig(listen_address="127.0.0.1"))
        self.assertEqual(loaded.api.port, 5850)
        [credential] = loaded.api.credentials
        self.assertNotEqual(credential.key, config.PLACEHOLDER_KEY)
        self.assertNotEqual(credential.id, "dummyID")
        self.assertGreaterEqual(len(credential.key), 40)
        self.assertEqual(
            loaded.image,
            ImageConfig(
                cert_file=str(cert_dir.absolute() / "nano_image.crt.pem"),
                key_file=str(cert_dir.absolute() / "nano_image.key.pem"),
            ),
        )

    def test_files_are_written_as_go_indents_them(self) -> None:
        """One space per level, as the original's MarshalIndent, with Go's escapes."""
        cert_dir = self.directory / "certs <&> é"
        ensure_config(self.directory, cert_dir=cert_dir)
        text = (self.directory / config.IMAGE_FILE).read_text(encoding="utf-8")
        self.assertTrue(text.startswith('{\n "cert_file": "'), text)
        self.assertIn("certs \\u003c\\u0026\\u003e é", text)
        self.assertTrue(text.endswith('"\n}\n'), text)
        loaded = load_image(self.directory / config.IMAGE_FILE)
        self.assertEqual(loaded.cert_file, str(cert_dir.absolute() / config.IMAGE_CERT_NAME))

    def test_no_temporary_files_are_left_behind(self) -> None:
        ensure_config(self.directory)
        self.assertEqual(
            sorted(path.name for path in self.directory.iterdir()),
            sorted([config.DOMAIN_FILE, config.API_FILE, config.IMAGE_FILE]),
        )

    def test_every_generated_key_is_fresh(self) -> None:
        first, second = self.directory / "one", self.directory / "two"
        ensure_config(first)
        ensure_config(second)
        self.assertNotEqual(
            load_api(first / config.API_FILE).credentials,
            load_api(second / config.API_FILE).credentials,
        )

    def test_existing_files_are_never_touched(self) -> None:
        original = self.write(config.API_FILE, README_API)
        written = ensure_config(self.directory)
        self.assertNotIn(original, written)
        self.assertEqual(original.read_text(encoding="utf-8"), README_API)
        self.assertEqual(ensure_config(self.directory), [])

    def test_says_in_the_log_where_it_wrote(self) -> None:
        written = ensure_config(self.directory)
        messages = [formatEvent(event) for event in self.events]
        for path in written:
            self.assertTrue(any(str(path) in message for message in messages), path)

    def test_default_cert_dir_is_beside_the_config_dir(self) -> None:
        ensure_config(self.directory / "config")
        loaded = load_image(self.directory / "config" / config.IMAGE_FILE)
        expected = (self.directory / "cert" / "nano_image.crt.pem").absolute()
        self.assertEqual(loaded.cert_file, str(expected))
