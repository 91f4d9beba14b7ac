"""`nanocore start|stop|status|halt|import-nano`: parsing, pid checks, and the real daemon."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from nanocore import __version__, cli, config, pidfile, start_report
from nanocore.layout import Layout
from nanocore.services.listen import read_port
from nanocore.services.replay import REPLAY_MEMORY_FILE, decode
from tests.filemodes import skip_unless_modes_bind

REPO_ROOT = Path(__file__).resolve().parent.parent
reactor: Any = global_reactor


def console() -> tuple[cli.Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return cli.Console(out, err), out, err


def layout_under(root: Path) -> Layout:
    return Layout(
        config_dir=root / "config",
        data_dir=root / "data",
        cert_dir=root / "cert",
        log_dir=root / "log",
    )


class ParseTests(SynchronousTestCase):
    def parsed(self, *argv: str) -> cli.CommandOptions:
        the_console, _out, err = console()
        options = cli.parse(argv, the_console)
        assert isinstance(options, cli.CommandOptions), err.getvalue()
        return options

    def refused(self, *argv: str) -> str:
        the_console, _out, err = console()
        self.assertEqual(cli.parse(argv, the_console), cli.EXIT_USAGE)
        return err.getvalue()

    def test_start_takes_the_four_folders(self) -> None:
        options = self.parsed("start", "--config-dir", "/etc/nano", "--log-dir=/var/log/nano")
        self.assertEqual(options.subCommand, "start")
        self.assertEqual(
            dict(options.subOptions),
            {
                "config-dir": Path("/etc/nano"),
                "data-dir": Path("data"),
                "cert-dir": Path("cert"),
                "log-dir": Path("/var/log/nano"),
            },
        )

    def test_stop_status_halt_take_the_data_folder(self) -> None:
        for command in ("stop", "status", "halt"):
            options = self.parsed(command, "--data-dir", "/srv/nano")
            self.assertEqual(options.subCommand, command)
            self.assertEqual(dict(options.subOptions), {"data-dir": Path("/srv/nano")})
            self.assertEqual(options.subOptions.pid_file(), Path("/srv/nano/core.pid"))

    def test_import_nano_takes_a_source_path(self) -> None:
        options = self.parsed("import-nano", "/opt/nano/core/data", "--data-dir", "d")
        self.assertEqual(
            dict(options.subOptions),
            {"data-dir": Path("d"), "source": Path("/opt/nano/core/data")},
        )

    def test_a_command_is_required(self) -> None:
        self.assertIn("a command is required", self.refused())

    def test_unknown_command_and_missing_arguments_are_usage_errors(self) -> None:
        self.assertIn("snap", self.refused("snap"))
        self.assertIn("nanocore:", self.refused("import-nano"))
        self.assertIn("--data-dir", self.refused("status", "--data-dir="))

    def test_a_commands_usage_names_the_command(self) -> None:
        """Not the list of every command, and with the command's own arguments (PATH)."""
        self.assertTrue(
            self.refused("import-nano").startswith("Usage: nanocore import-nano PATH [--data-dir"),
        )
        self.assertTrue(self.refused("stop", "--bogus").startswith("Usage: nanocore stop "))
        printed = io.StringIO()
        self.patch(sys, "stdout", printed)
        the_console, _out, _err = console()
        self.assertEqual(cli.parse(["start", "--help"], the_console), 0)
        self.assertTrue(printed.getvalue().startswith("Usage: nanocore start [--config-dir"))
        self.assertTrue(self.refused().startswith("Usage: nanocore start|stop|status|halt|"))

    def test_help_exits_zero(self) -> None:
        printed = io.StringIO()
        self.patch(sys, "stdout", printed)
        the_console, _out, _err = console()
        self.assertEqual(cli.parse(["--help"], the_console), 0)
        self.assertIn("import-nano", printed.getvalue())

    def test_version_names_nanocore_for_every_command(self) -> None:
        for argv in (["--version"], ["start", "--version"], ["status", "--version"]):
            printed = io.StringIO()
            self.patch(sys, "stdout", printed)
            the_console, _out, _err = console()
            self.assertEqual(cli.parse(argv, the_console), 0)
            self.assertTrue(printed.getvalue().startswith(f"nanocore {__version__} "), argv)
            self.assertIn("compatible with Nano Core 1.4.0", printed.getvalue())
            self.assertNotIn("Twisted version", printed.getvalue())

    def test_twistd_arguments_name_every_folder(self) -> None:
        layout = layout_under(Path("/n"))
        arguments = cli.twistd_arguments(layout)
        self.assertEqual(
            arguments[2:],
            [
                "--pidfile",
                "/n/data/core.pid",
                "--logfile",
                "/n/log/core.log",
                "nanocore",
                "--config-dir",
                "/n/config",
                "--data-dir",
                "/n/data",
                "--cert-dir",
                "/n/cert",
                "--log-dir",
                "/n/log",
            ],
        )

    def test_child_finds_the_package_first(self) -> None:
        path = cli.child_environment()["PYTHONPATH"].split(os.pathsep)
        self.assertEqual(path[0], str(REPO_ROOT))


class PidFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pid_file = Path(self.mktemp())

    def test_missing_or_garbage_pid_files_name_no_process(self) -> None:
        self.assertIsNone(pidfile.read_pid(self.pid_file))
        for garbage in ("", "abc", "-5", "0", "12 13"):
            self.pid_file.write_text(garbage)
            self.assertIsNone(pidfile.read_pid(self.pid_file), garbage)
        self.pid_file.write_text("123\n")
        self.assertEqual(pidfile.read_pid(self.pid_file), 123)

    def test_a_reused_pid_is_not_nanocore(self) -> None:
        """The test runner is alive but is not a nanocore daemon for this pid file."""
        self.pid_file.write_text(str(os.getpid()))
        self.assertIsNone(pidfile.running_pid(self.pid_file))
        self.assertTrue(pidfile.remove_stale(self.pid_file))
        self.assertFalse(self.pid_file.exists())
        self.assertFalse(pidfile.remove_stale(self.pid_file))


def blocked_child(case: SynchronousTestCase, *argv: str, cwd: Path | None = None) -> int:
    """A live process with ``argv`` after Python's own (it waits on its stdin, closed at
    cleanup); its pid, once it runs (before, /proc shows the forking parent's argv)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=cwd,
    )

    def end() -> None:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.stdout.close()
        child.wait()

    case.addCleanup(end)
    assert child.stdout is not None
    case.assertEqual(child.stdout.readline(), b"ready\n")
    return child.pid


class PidIdentityTests(SynchronousTestCase):
    """A pid is the daemon of a pid file only when it is a nanocore twistd writing that file:
    a reused pid may belong to another nanocore, which `halt` must never kill."""

    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp()).absolute()
        self.data_dir.mkdir()
        self.pid_file = self.data_dir / "core.pid"

    def running(self, pid: int) -> int | None:
        self.pid_file.write_text(str(pid))
        return pidfile.running_pid(self.pid_file)

    def test_the_daemon_of_this_pid_file_is_running(self) -> None:
        pid = blocked_child(self, "--pidfile", str(self.pid_file), "nanocore")
        self.assertEqual(self.running(pid), pid)
        pid = blocked_child(self, f"--pidfile={self.pid_file}", "nanocore")
        self.assertEqual(self.running(pid), pid)

    def test_a_relative_pid_file_is_taken_from_the_daemons_folder(self) -> None:
        pid = blocked_child(self, "--pidfile", "core.pid", "nanocore", cwd=self.data_dir)
        self.assertEqual(self.running(pid), pid)
        other = blocked_child(self, "--pidfile", "core.pid", "nanocore", cwd=self.data_dir.parent)
        self.assertEqual(self.running(other), pid)  # not the other: the first one, still alive

    def test_another_nanocore_is_not_this_pid_files_daemon(self) -> None:
        elsewhere = self.data_dir.parent / "elsewhere" / "core.pid"
        for argv in (
            ("--pidfile", str(elsewhere), "nanocore"),  # a second Core's daemon
            ("--pidfile=", "nanocore"),  # a benchmark's twistd -n, without a pid file
            ("nanocore", "call", "GET", "/compute_pools/"),  # python -m nanocore call
            ("--pidfile", str(self.pid_file), "other-plugin"),
        ):
            self.assertIsNone(self.running(blocked_child(self, *argv)), argv)

    def test_halt_never_kills_another_nanocore(self) -> None:
        elsewhere = self.data_dir.parent / "elsewhere" / "core.pid"
        pid = blocked_child(self, "--pidfile", str(elsewhere), "nanocore")
        self.pid_file.write_text(str(pid))
        the_console, out, _err = console()
        options = cli.parse(["halt", f"--data-dir={self.data_dir}"], the_console)
        assert isinstance(options, cli.CommandOptions)
        code = self.successResultOf(
            ensureDeferred(cli.run_command(MemoryReactor(), options, the_console))
        )
        self.assertEqual((code, out.getvalue()), (cli.EXIT_OK, f"removed stale pid file "
                         f"{self.pid_file}\ncore is already stopped\n"))  # fmt: skip
        os.kill(pid, 0)  # still alive: raises ProcessLookupError if it was killed

    def test_a_daemon_that_removed_its_pid_file_while_exiting_still_runs(self) -> None:
        """twistd removes the pid file a second or so before its process exits (QA pass 22:
        `stop` said success while it ran, and a `start` then ran a second daemon)."""
        pid = blocked_child(self, "--pidfile", str(self.pid_file), "nanocore")
        self.assertFalse(self.pid_file.exists())
        self.assertEqual(pidfile.running_pid(self.pid_file), pid)
        the_console, out, _err = console()
        options = cli.parse(["status", f"--data-dir={self.data_dir}"], the_console)
        assert isinstance(options, cli.CommandOptions)
        code = self.successResultOf(
            ensureDeferred(cli.run_command(MemoryReactor(), options, the_console))
        )
        self.assertEqual(
            (code, out.getvalue()), (cli.EXIT_OK, f"core is running, current pid {pid}\n")
        )
        elsewhere = self.data_dir.parent / "elsewhere" / "core.pid"
        self.assertIsNone(pidfile.running_pid(elsewhere))  # another Core's is not this one

    def test_a_dead_pid_is_stale(self) -> None:
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        self.assertIsNone(self.running(child.pid))
        self.assertTrue(pidfile.remove_stale(self.pid_file))


class CommandTests(SynchronousTestCase):
    """Commands that end before any process is started."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()
        self.layout = layout_under(self.root)
        self.layout.create_folders()

    def run_command(self, *argv: str) -> tuple[int, str, str]:
        the_console, out, err = console()
        options = cli.parse(argv, the_console)
        assert isinstance(options, cli.CommandOptions)
        result = self.successResultOf(
            ensureDeferred(cli.run_command(MemoryReactor(), options, the_console))
        )
        return result, out.getvalue(), err.getvalue()

    def test_status_of_a_stopped_core_exits_3(self) -> None:
        code, out, _err = self.run_command("status", f"--data-dir={self.layout.data_dir}")
        self.assertEqual((code, out), (cli.EXIT_NOT_RUNNING, "core is stopped\n"))

    def test_status_reports_a_stale_pid_file(self) -> None:
        self.layout.pid_file.write_text(str(os.getpid()))
        code, out, _err = self.run_command("status", f"--data-dir={self.layout.data_dir}")
        self.assertEqual(code, cli.EXIT_NOT_RUNNING)
        self.assertIn("stale pid file", out)

    def test_halt_never_kills_a_process_that_reused_the_pid(self) -> None:
        self.layout.pid_file.write_text(str(os.getpid()))
        code, out, _err = self.run_command("halt", f"--data-dir={self.layout.data_dir}")
        self.assertEqual(code, cli.EXIT_OK)
        self.assertIn("already stopped", out)
        self.assertFalse(self.layout.pid_file.exists())

    def test_stop_when_stopped_says_so(self) -> None:
        code, out, _err = self.run_command("stop", f"--data-dir={self.layout.data_dir}")
        self.assertEqual((code, out), (cli.EXIT_OK, "core is already stopped\n"))

    def test_start_with_a_corrupt_config_spawns_nothing(self) -> None:
        config.ensure_config(self.layout.config_dir, cert_dir=self.layout.cert_dir)
        domain = self.layout.config_dir / config.DOMAIN_FILE
        domain.write_text(json.dumps({"listen_address": "127.0.0.1", "group_port": "x"}))
        # MemoryReactor cannot spawn processes: reaching the spawn would fail this test.
        code, _out, err = self.run_command(
            "start",
            f"--config-dir={self.layout.config_dir}",
            f"--data-dir={self.layout.data_dir}",
            f"--cert-dir={self.layout.cert_dir}",
            f"--log-dir={self.layout.log_dir}",
        )
        self.assertEqual(code, cli.EXIT_FAILURE)
        self.assertIn(str(domain), err)
        self.assertIn('"group_port"', err)
        self.assertFalse(self.layout.pid_file.exists())

    def test_start_with_a_folder_that_cannot_be_made_spawns_nothing(self) -> None:
        """A folder option naming a file says so, before any other folder is made."""
        blocked = self.root / "not-a-folder"
        blocked.write_text("a file where the log folder should be")
        fresh = layout_under(self.root / "fresh")
        code, _out, err = self.run_command(
            "start",
            f"--config-dir={fresh.config_dir}",
            f"--data-dir={fresh.data_dir}",
            f"--cert-dir={fresh.cert_dir}",
            f"--log-dir={blocked}",
        )
        self.assertEqual(code, cli.EXIT_FAILURE)
        self.assertEqual(
            err, f"nanocore failed to start: cannot prepare {blocked}: not a folder\n"
        )
        self.assertFalse((self.root / "fresh").exists())

    def test_import_nano_imports_a_nano_installation(self) -> None:
        source = REPO_ROOT / "tests" / "fixtures" / "nano14"
        data = f"--data-dir={self.layout.data_dir}"
        code, out, err = self.run_command("import-nano", str(source), data)
        self.assertEqual(code, cli.EXIT_OK, err)
        self.assertIn(f"imported {source} into {self.layout.data_dir}", out)
        self.assertIn(f"image files placed in {self.layout.data_dir}: 2", out)
        self.assertNotEqual(list(self.layout.data_dir.iterdir()), [])

    def test_import_nano_without_image_data_warns(self) -> None:
        source = self.root / "nano"
        shutil.copytree(REPO_ROOT / "tests" / "fixtures" / "nano14", source)
        (source / "data" / "image.data").unlink()
        data = f"--data-dir={self.layout.data_dir}"
        code, out, err = self.run_command("import-nano", str(source), data)
        self.assertEqual(code, cli.EXIT_OK, err)
        self.assertIn(f"warning: no image.data in {source / 'data'}", err)
        self.assertIn("imported", out)

    def test_import_nano_creates_its_data_folder_0700(self) -> None:
        """As documented for every folder nanocore makes, whatever the caller's umask."""
        self.addCleanup(os.umask, os.umask(0o022))
        data_dir = self.root / "new" / "data"
        source = REPO_ROOT / "tests" / "fixtures" / "nano14"
        code, _out, err = self.run_command("import-nano", str(source), f"--data-dir={data_dir}")
        self.assertEqual(code, cli.EXIT_OK, err)
        self.assertEqual(stat.S_IMODE(data_dir.stat().st_mode), 0o700)

    def test_import_nano_refusal_is_reported(self) -> None:
        empty = self.root / "empty"
        empty.mkdir()
        data = f"--data-dir={self.layout.data_dir}"
        code, _out, err = self.run_command("import-nano", str(empty), data)
        self.assertEqual(code, cli.EXIT_FAILURE)
        self.assertIn("import refused: no resource.data", err)
        self.assertEqual(list(self.layout.data_dir.iterdir()), [])


class WritableTests(SynchronousTestCase):
    def test_a_full_data_disk_is_said_in_one_line_and_leaves_nothing(self) -> None:
        """QA pass 24: a full disk let the test file be made, then twistd's pid file could
        not be written, a traceback under `nanocore failed to start`."""
        layout = layout_under(Path(self.mktemp()).absolute())
        layout.create_folders()

        def full(descriptor: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(cli.os, "write", full)
        with self.assertRaises(cli.CannotPrepare) as refused:
            cli.check_writable(layout)
        self.assertEqual(
            str(refused.exception),
            f"cannot write in the data folder {layout.data_dir}: No space left on device",
        )
        self.assertEqual(os.listdir(layout.data_dir), [])


class StartFailedTests(SynchronousTestCase):
    """What `start` says when the daemon did not start, from what twistd and the log said."""

    def setUp(self) -> None:
        self.layout = layout_under(Path(self.mktemp()).absolute())
        self.layout.create_folders()
        self.layout.log_file.write_text("2020-01-01T00:00:00+0000 [-] AN EARLIER RUN\n")
        self.mark = start_report.LogMark.of(self.layout.log_file)

    def said(self, twistd_said: bytes, *logged: str) -> list[str]:
        with self.layout.log_file.open("a") as log:
            log.writelines(line + "\n" for line in logged)
        the_console, out, err = console()
        code = cli.start_failed(the_console, self.layout, self.mark, twistd_said)
        self.assertEqual((code, out.getvalue()), (cli.EXIT_FAILURE, ""))
        self.assertNotIn("AN EARLIER RUN", err.getvalue())
        return err.getvalue().splitlines()

    def test_a_refusal_before_the_daemon_forked_is_said_whole(self) -> None:
        lines = self.said(b"nanocore: certificate error: /c/x.pem cannot serve 127.0.0.1: why\n")
        self.assertEqual(
            lines[0],
            "nanocore failed to start: certificate error: /c/x.pem cannot serve 127.0.0.1: why",
        )

    def test_twistds_cut_report_gives_way_to_the_logged_reason(self) -> None:
        cut = b'An error has occurred: b"...: [Errno 98] Address al"\nPlease look at log file\n'
        lines = self.said(cut, "2026 [nanocore.service#critical] nanocore could not start: why")
        self.assertEqual(lines[0], "nanocore failed to start: why")
        self.assertNotIn("Address al", "\n".join(lines))

    def test_a_traceback_from_twistd_is_said_by_its_last_line(self) -> None:
        said = (
            b'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n'
            b"PermissionError: [Errno 13] Permission denied: '/n/x'\n"
        )
        lines = self.said(said)
        self.assertEqual(
            lines[0],
            "nanocore failed to start: PermissionError: [Errno 13] Permission denied: '/n/x'",
        )

    def test_a_start_that_lost_a_race_names_the_daemon_that_won(self) -> None:
        """Two starts at once: twistd's refusal speaks of its options; the winner runs."""
        pid = blocked_child(self, "--pidfile", str(self.layout.pid_file), "nanocore")
        self.layout.pid_file.write_text(str(pid))
        refused = (
            b"Another twistd server is running, PID 1\n\nThis could either be a previously"
            b" started instance of your application or a different application entirely. To"
            b" start a new one, either run it in some other directory, or use the --pidfile and"
            b" --logfile parameters to avoid clashes.\n"
        )
        self.assertEqual(self.said(refused), [f"core is already running, current pid {pid}"])

    def test_without_a_reason_this_starts_log_is_shown(self) -> None:
        cut = b'An error has occurred: b"...: [Errno 98] Address al"\nPlease look at log file\n'
        lines = self.said(cut, "2026 [-] Traceback (most recent call last):", "2026 [-] Oops")
        self.assertEqual(lines[0], "nanocore failed to start")
        self.assertEqual(
            lines[-2:], ["2026 [-] Traceback (most recent call last):", "2026 [-] Oops"]
        )


class RealDaemonTests(TestCase):
    """`python -m nanocore` as a real daemon; its API takes any free loopback port (api.cfg
    says 0) and the daemon reports the one it got in data/api.port."""

    timeout = 120

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir()
        self.set_api_port(0)
        self.pid_file = self.root / "data" / "core.pid"
        self.addCleanup(self.nanocore, "halt")

    def set_api_port(self, port: int) -> None:
        config_dir = self.root / "config"
        config.ensure_config(config_dir)
        api = json.loads((config_dir / config.API_FILE).read_text())
        api["port"] = port
        (config_dir / config.API_FILE).write_text(json.dumps(api))

    @property
    def port(self) -> int:
        """The API port of the running daemon."""
        port = read_port(layout_under(self.root).api_port_file)
        assert port is not None, "the daemon reported no API port"
        return port

    def nanocore(self, *argv: str) -> Deferred[tuple[bytes, bytes, int]]:
        environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        return getProcessOutputAndValue(
            sys.executable,
            ["-m", "nanocore", *argv],
            env=environment,
            path=str(self.root),
            reactor=reactor,
        )

    async def get_version(self) -> dict[str, Any]:
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        url = f"http://127.0.0.1:{self.port}/api/v1/".encode()
        response = await agent.request(b"GET", url)
        result: dict[str, Any] = json.loads(await readBody(response))
        return result

    async def expect(self, code: int, *argv: str) -> str:
        out, err, actual = await self.nanocore(*argv)
        text = (out + err).decode()
        self.assertEqual(actual, code, f"nanocore {' '.join(argv)}: {text}")
        return text

    def test_start_status_stop(self) -> Deferred[None]:
        async def scenario() -> None:
            text = await self.expect(0, "start")
            self.assertIn("core started", text)
            self.assertIn(f"API http://127.0.0.1:{self.port}/api/v1/", text)
            pid = pidfile.read_pid(self.pid_file)
            self.assertIsNotNone(pid)
            self.assertIn(f"current pid {pid}", await self.expect(0, "status"))
            version = await self.get_version()
            self.assertEqual(version["data"]["name"], "nanocore")
            self.assertIn("already running", await self.expect(1, "start"))
            # `nanocore call` signs with api.cfg's first credential and exits from the envelope.
            pools = json.loads(await self.expect(0, "call", "GET", "/compute_pools/"))
            self.assertEqual([pool["name"] for pool in pools["data"]], ["default"])
            refused = json.loads(await self.expect(1, "call", "POST", "/compute_pools/default"))
            self.assertEqual(refused["message"], "compute pool 'default' already exists")
            await self.expect(0, "call", "POST", "/compute_pools/cli")
            self.assertIn("stop core success", await self.expect(0, "stop"))
            assert pid is not None
            # Said once the daemon is gone, not once its pid file is (QA pass 22, F2).
            self.assertFalse(pidfile.is_nanocore_process(pid, self.pid_file))
            self.assertFalse(self.pid_file.exists())
            self.assertFalse(layout_under(self.root).api_port_file.exists())
            self.assertIn("core is stopped", await self.expect(3, "status"))
            # The signatures of the two writes (at least) are kept for the next start.
            kept = decode((self.root / "data" / REPLAY_MEMORY_FILE).read_bytes())
            self.assertGreaterEqual(sum(len(digests) for digests in kept.values()), 2)
            log = (self.root / "log" / "core.log").read_text()
            self.assertIn("Server Shut Down", log)
            # On stop Core says how long its commits took (the one above).
            self.assertIn("store commit times since the last line: 1 in all, p50 ", log)

        return ensureDeferred(scenario())

    def test_backup_while_running_then_restore(self) -> Deferred[None]:
        """The running daemon holds its store locked: `backup` has it copy the store, and
        `restore` puts the copy back once it is stopped."""

        async def scenario() -> None:
            await self.expect(0, "start")
            await self.expect(0, "call", "POST", "/compute_pools/kept")
            said = await self.expect(0, "backup", "saved")
            self.assertIn(f"store backed up to {self.root / 'saved'} (", said)
            (made,) = (self.root / "data" / "backups").iterdir()
            self.assertEqual(made.read_bytes(), (self.root / "saved").read_bytes())
            await self.expect(0, "call", "POST", "/compute_pools/after")
            self.assertIn("stop it first", await self.expect(1, "restore", "saved"))
            await self.expect(0, "stop")
            said = await self.expect(0, "restore", "saved")
            self.assertIn("the store it replaced is kept as", said)
            await self.expect(0, "start")
            pools = json.loads(await self.expect(0, "call", "GET", "/compute_pools/"))
            self.assertEqual([pool["name"] for pool in pools["data"]], ["default", "kept"])
            await self.expect(0, "stop")
            # Stopped, `backup` copies the store itself, as the daemon would.
            said = await self.expect(0, "backup")
            self.assertEqual(len(list((self.root / "data" / "backups").iterdir())), 2)
            self.assertIn("data/backups/nanocore-", said)

        return ensureDeferred(scenario())

    def test_halt_then_start_again(self) -> Deferred[None]:
        async def scenario() -> None:
            await self.expect(0, "start")
            first = pidfile.read_pid(self.pid_file)
            self.assertIn(f"pid {first} killed", await self.expect(0, "halt"))
            await self.expect(3, "status")
            # A pid file left by a crash does not block the next start.
            self.pid_file.write_text(str(first))
            text = await self.expect(0, "start")
            self.assertIn("core started", text)
            second = pidfile.read_pid(self.pid_file)
            self.assertNotEqual(first, second)
            self.assertEqual((await self.get_version())["error_code"], 0)
            await self.expect(0, "stop")
            # The log of the killed daemon is still there: core.log is appended to.
            log = (self.root / "log" / "core.log").read_text()
            self.assertEqual(log.count("starting up"), 2)
            # The second run says the first did not stop cleanly; a clean stop leaves no trace.
            self.assertEqual(log.count("the previous run of nanocore did not stop cleanly"), 1)
            await self.expect(0, "start")
            log = (self.root / "log" / "core.log").read_text()
            self.assertEqual(log.count("the previous run of nanocore did not stop cleanly"), 1)
            await self.expect(0, "stop")

        return ensureDeferred(scenario())

    def test_a_daemon_dead_without_cleanup(self) -> Deferred[None]:
        """Killed by a signal nothing handles: its pid file stays; status and start say so, the
        fault file holds its threads' tracebacks, and the next run's log names its death."""

        async def scenario() -> None:
            await self.expect(0, "start")
            first = pidfile.read_pid(self.pid_file)
            assert first is not None
            os.kill(first, signal.SIGALRM)
            for _ in range(int(cli.STOP_TIMEOUT / cli.POLL_INTERVAL)):
                if pidfile.running_pid(self.pid_file) is None:
                    break
                await deferLater(reactor, cli.POLL_INTERVAL, lambda: None)
            self.assertTrue(self.pid_file.exists())
            self.assertIn("stale pid file", await self.expect(3, "status"))
            text = await self.expect(0, "start")
            self.assertIn(f"removed stale pid file {self.pid_file}", text)
            self.assertIn("core started", text)
            await self.expect(0, "stop")
            fault_file = self.root / "log" / "core-fault.log"
            self.assertIn("Current thread", fault_file.read_text())
            log = (self.root / "log" / "core.log").read_text()
            self.assertIn("died of a fatal error or a signal", log)
            self.assertIn(str(fault_file), log)

        return ensureDeferred(scenario())

    def test_corrupt_config_fails_naming_file_and_key(self) -> Deferred[None]:
        api_file = self.root / "config" / config.API_FILE
        api_file.write_text(json.dumps({"port": 0, "credentials": [{"id": "a"}]}))

        async def scenario() -> None:
            text = await self.expect(1, "start")
            self.assertIn(str(api_file), text)
            self.assertIn('"credentials[0].key"', text)
            self.assertFalse(self.pid_file.exists())
            await self.expect(3, "status")

        return ensureDeferred(scenario())

    async def failed_start(self, *, in_process: bool = True) -> list[str]:
        """Start with an earlier run's line at the end of the log; the lines it printed.

        Only this start's words may be printed, never the earlier run's log. The daemon is
        a real process either way; `in_process` runs the command's side as a function, so
        that its code is measured.
        """
        log_file = self.root / "log" / "core.log"
        log_file.parent.mkdir(exist_ok=True)
        log_file.write_text("2020-01-01T00:00:00+0000 [-] AN EARLIER RUN SAID THIS\n")
        if in_process:
            the_console, out, err = console()
            code = await cli.start(reactor, layout_under(self.root), the_console)
            self.assertEqual(code, cli.EXIT_FAILURE)
            text = out.getvalue() + err.getvalue()
        else:
            text = await self.expect(1, "start")
        self.assertNotIn("AN EARLIER RUN", text)
        await self.expect(3, "status")
        return text.splitlines()

    def test_port_in_use_is_said_in_one_line(self) -> Deferred[None]:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        self.set_api_port(taken)

        async def scenario() -> None:
            lines = await self.failed_start(in_process=False)
            self.assertEqual(
                lines[0],
                f"nanocore failed to start: cannot listen on 127.0.0.1:{taken}:"
                " the port is already in use by another program",
            )
            self.assertEqual(lines[1:], [f"details in {self.root / 'log' / 'core.log'}"])

        return ensureDeferred(scenario())

    def test_address_not_on_this_host_is_said_in_one_line(self) -> Deferred[None]:
        # TEST-NET-1 is never a local address: the bind fails, no packet leaves the host.
        domain = self.root / "config" / config.DOMAIN_FILE
        domain.write_text(json.dumps({"listen_address": "192.0.2.1"}))

        async def scenario() -> None:
            lines = await self.failed_start()
            self.assertEqual(
                lines[0],
                "nanocore failed to start: cannot listen on 192.0.2.1:0: 192.0.2.1"
                " is not an address of this host (listen_address in domain.cfg)",
            )

        return ensureDeferred(scenario())

    def test_damaged_database_is_said_with_its_remedy(self) -> Deferred[None]:
        database = self.root / "data" / "nanocore.db"
        database.parent.mkdir()
        database.write_bytes(b"this is no SQLite database" * 100)

        async def scenario() -> None:
            lines = await self.failed_start()
            self.assertEqual(
                lines[0],
                f"nanocore failed to start: damaged database: {database} is not a readable"
                " SQLite database (file is not a database); restore it from a backup or move"
                " it away to start with an empty store",
            )
            self.assertEqual(len(lines), 2)
            # An expected failure is one line in the log too, not a traceback.
            self.assertNotIn("Traceback", (self.root / "log" / "core.log").read_text())
            self.assertFalse(layout_under(self.root).api_port_file.exists())

        return ensureDeferred(scenario())

    async def refused_start(self) -> list[str]:
        """What a start that fails before anything forks prints; it leaves no daemon."""
        lines = (await self.expect(1, "start")).splitlines()
        await self.expect(3, "status")
        return lines

    def test_a_log_file_that_is_a_folder_is_said_in_one_line(self) -> Deferred[None]:
        log_file = self.root / "log" / "core.log"
        log_file.mkdir(parents=True)

        async def scenario() -> None:
            self.assertEqual(
                await self.refused_start(),
                [
                    f"nanocore failed to start: cannot write the log file {log_file}:"
                    " Is a directory"
                ],
            )

        return ensureDeferred(scenario())

    def test_a_read_only_log_file_is_said_in_one_line(self) -> Deferred[None]:
        skip_unless_modes_bind()
        log_file = self.root / "log" / "core.log"
        log_file.parent.mkdir()
        log_file.touch(mode=0o400)

        async def scenario() -> None:
            self.assertEqual(
                await self.refused_start(),
                [
                    f"nanocore failed to start: cannot write the log file {log_file}:"
                    " Permission denied"
                ],
            )

        return ensureDeferred(scenario())

    def test_a_read_only_data_folder_is_said_in_one_line(self) -> Deferred[None]:
        skip_unless_modes_bind()
        data = self.root / "data"
        data.mkdir(mode=0o500)
        self.addCleanup(data.chmod, 0o700)

        async def scenario() -> None:
            self.assertEqual(
                await self.refused_start(),
                [
                    f"nanocore failed to start: cannot write in the data folder {data}:"
                    " Permission denied"
                ],
            )

        return ensureDeferred(scenario())

    def test_a_pid_file_that_cannot_be_removed_is_said_in_one_line(self) -> Deferred[None]:
        """start refuses, naming it; stop and halt did what they were asked: a warning."""
        self.pid_file.mkdir(parents=True)
        cannot = f"cannot remove the stale pid file {self.pid_file}: Is a directory"

        async def scenario() -> None:
            self.assertEqual(await self.refused_start(), [f"nanocore failed to start: {cannot}"])
            for command in ("stop", "halt"):
                text = await self.expect(0, command)
                self.assertEqual(
                    sorted(text.splitlines()), ["core is already stopped", f"warning: {cannot}"]
                )

        return ensureDeferred(scenario())

    def test_stop_and_halt_succeed_when_the_pid_file_stays(self) -> Deferred[None]:
        """The data folder turned read-only under a running daemon: it still stops."""
        skip_unless_modes_bind()
        data = self.root / "data"
        self.addCleanup(data.chmod, 0o700)
        cannot = f"warning: cannot remove the stale pid file {self.pid_file}: Permission denied"

        async def scenario() -> None:
            await self.expect(0, "start")
            pid = pidfile.read_pid(self.pid_file)
            data.chmod(0o500)
            text = await self.expect(0, "stop")
            self.assertEqual(sorted(text.splitlines()), [f"stop core success (pid {pid})", cannot])
            self.assertIn("stale pid file", await self.expect(3, "status"))
            data.chmod(0o700)
            self.assertIn("core started", await self.expect(0, "start"))
            pid = pidfile.read_pid(self.pid_file)
            data.chmod(0o500)
            text = await self.expect(0, "halt")
            self.assertEqual(
                sorted(text.splitlines()), [f"core halted (pid {pid} killed)", cannot]
            )
            await self.expect(3, "status")

        return ensureDeferred(scenario())

    def test_an_interpreter_that_cannot_run_is_said_in_one_line(self) -> Deferred[None]:
        interpreter = self.root / "python3"
        interpreter.write_text("not executable")
        self.patch(sys, "executable", str(interpreter))

        async def scenario() -> None:
            the_console, out, err = console()
            code = await cli.start(reactor, layout_under(self.root), the_console)
            self.assertEqual(
                (code, out.getvalue(), err.getvalue()),
                (
                    cli.EXIT_FAILURE,
                    "",
                    f"nanocore failed to start: cannot run {interpreter}: Permission denied\n",
                ),
            )

        return ensureDeferred(scenario())

    def test_commands_in_process(self) -> Deferred[None]:
        """The same commands called as functions, so their code paths are measured too."""
        layout = layout_under(self.root)

        async def scenario() -> None:
            the_console, out, err = console()
            self.assertEqual(await cli.start(reactor, layout, the_console), 0, err.getvalue())
            pid = pidfile.read_pid(layout.pid_file)
            self.assertIn(f"core started, pid {pid}", out.getvalue())
            self.assertEqual(cli.status(layout.pid_file, the_console), cli.EXIT_OK)
            self.assertEqual(await cli.start(reactor, layout, the_console), cli.EXIT_FAILURE)
            self.assertIn(f"already running, current pid {pid}", err.getvalue())
            self.assertEqual(await cli.halt(reactor, layout.pid_file, the_console), cli.EXIT_OK)
            self.assertFalse(layout.pid_file.exists())
            self.assertEqual(await cli.start(reactor, layout, the_console), cli.EXIT_OK)
            self.assertEqual(await cli.stop(reactor, layout.pid_file, the_console), cli.EXIT_OK)
            self.assertEqual(cli.status(layout.pid_file, the_console), cli.EXIT_NOT_RUNNING)

        return ensureDeferred(scenario())
