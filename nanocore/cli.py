"""`nanocore start|stop|status|halt|import-nano|call|backup|restore`: the original's commands
(and nanocore's own), around twistd.

`start` checks (and if needed writes) the config in the foreground, so a mistake is reported
on the terminal before anything forks; then it runs twistd with the nanocore plugin as a
daemon (pid file in the data folder, log appended to `log/core.log`) and waits until the API
serves (`GET /api/v1/` answers 200) or the daemon dies. `status` exits 0 when running and 3
when not, as LSB init scripts expect. `call` (in `nanocore.call`) makes one signed API request.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.error import TimeoutError as ProcessTimeout
from twisted.internet.task import deferLater, react
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.web.client import Agent, ResponseFailed, readBody
from zope.interface import provider

import nanocore
from nanocore.backup import BackupOptions, RestoreOptions, backup, restore
from nanocore.call import CallOptions, call
from nanocore.config import ConfigError, CoreConfig, ensure_config, load_config
from nanocore.console import Console
from nanocore.layout import PID_FILE_NAME, Layout, LayoutOptions
from nanocore.options import AnyOrderOptions, NanocoreOptions, version_line
from nanocore.pidfile import remove_stale, running_pid
from nanocore.services.listen import read_port
from nanocore.start_report import LogMark, lines_since, reason_in

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: `status` when nanocore is not running (LSB "program is not running").
EXIT_NOT_RUNNING = 3

#: How long `start` waits for the daemon to answer, and `stop`/`halt` for it to exit.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.1
#: Seconds a start that failed waits for its daemon to be gone before it says why.
EXIT_GRACE = 5.0

#: Lines of core.log shown when the daemon fails to start.
LOG_TAIL_LINES = 20

#: Runs twistd in the child; twisted has no `python -m` entry for twistd itself.
TWISTD_BOOTSTRAP = (
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
)


class StartOptions(LayoutOptions):
    synopsis = "[--config-dir DIR] [--data-dir DIR] [--cert-dir DIR] [--log-dir DIR]"
    longdesc = "Check the config (writing missing files) and start nanocore as a daemon."


class DataDirOptions(NanocoreOptions):
    optParameters = [
        ["data-dir", None, "data", "folder holding core.pid"],
    ]

    def postOptions(self) -> None:
        if not self["data-dir"]:
            raise usage.UsageError("--data-dir must not be empty")
        self["data-dir"] = Path(self["data-dir"])

    def pid_file(self) -> Path:
        return Path(self["data-dir"]).absolute() / PID_FILE_NAME


class StopOptions(DataDirOptions):
    longdesc = "Stop the running nanocore (SIGTERM) and wait until it has exited."


class StatusOptions(DataDirOptions):
    longdesc = "Say whether nanocore is running; exit 0 when running, 3 when not."


class HaltOptions(DataDirOptions):
    longdesc = "Kill a running nanocore at once (SIGKILL) and remove its pid file."


class ImportOptions(AnyOrderOptions, DataDirOptions):
    synopsis = "PATH [--data-dir DIR]"
    longdesc = (
        "Import the data of a Nano Core 1.4.0 installation (its data/ folder, with"
        " resource.data and image.data) into nanocore's data folder. nanocore must be stopped."
    )

    def parseArgs(self, source: str) -> None:  # type: ignore[override]
        self["source"] = Path(source)


class CommandOptions(NanocoreOptions):
    synopsis = "Usage: nanocore start|stop|status|halt|import-nano|call|backup|restore [options]"

    longdesc = "Nano Core control node. `nanocore COMMAND --help` describes each command."

    def getSynopsis(self) -> str:
        """A command's usage starts `Usage: nanocore COMMAND`, not the list of all commands
        (twistd's `Options` puts the parent's synopsis before the command's own)."""
        if getattr(self, "subCommand", None) is None:
            return self.synopsis
        return "Usage: nanocore"

    subCommands = [
        ["start", None, StartOptions, "start nanocore as a daemon"],
        ["stop", None, StopOptions, "stop the running nanocore"],
        ["status", None, StatusOptions, "exit 0 if nanocore is running, 3 if not"],
        ["halt", None, HaltOptions, "kill a running nanocore at once"],
        ["import-nano", None, ImportOptions, "import the data of a Nano Core 1.4.0"],
        ["call", None, CallOptions, "send one signed API request, print the answer"],
        ["backup", None, BackupOptions, "copy the store to data/backups/ (and DEST)"],
        ["restore", None, RestoreOptions, "put a backup in place of the store (stopped)"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required")


# --- start ---------------------------------------------------------------------------------


class CannotPrepare(Exception):
    """A folder or file the daemon needs is unusable; the message names it and the reason."""


def check_writable(layout: Layout) -> None:
    """Open core.log and write a file in the data folder, as the daemon will.

    twistd opens the log and writes core.pid only after it has forked, where a refusal ends in
    a traceback instead of one line; core.log is created 0600, as the daemon's umask would.
    The test file gets a pid's bytes: a full disk lets a file be made, not written (QA pass 24).
    """
    try:
        os.close(os.open(layout.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as error:
        raise CannotPrepare(
            f"cannot write the log file {layout.log_file}: {error.strerror}"
        ) from None
    try:
        descriptor, name = tempfile.mkstemp(dir=layout.data_dir, prefix=".write-test.")
    except OSError as error:
        raise CannotPrepare(
            f"cannot write in the data folder {layout.data_dir}: {error.strerror}"
        ) from None
    try:
        os.write(descriptor, b"%d\n" % os.getpid())
        os.fsync(descriptor)
    except OSError as error:
        raise CannotPrepare(
            f"cannot write in the data folder {layout.data_dir}: {error.strerror}"
        ) from None
    finally:
        os.close(descriptor)
        os.unlink(name)


def _os_reason(error: OSError) -> str:
    """`<file>: <reason>` for an OSError, whether or not it names a file."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename is not None else reason


def check_config(layout: Layout, console: Console) -> CoreConfig:
    """Create folders, write missing config files, validate; show the config log lines."""

    @provider(ILogObserver)
    def show(event: LogEvent) -> None:
        if not str(event.get("log_namespace", "")).startswith("nanocore.config"):
            return
        text = formatEvent(event)
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            console.complain(f"warning: {text}")
        else:
            console.say(text)

    globalLogPublisher.addObserver(show)
    try:
        layout.create_folders()
        check_writable(layout)
        ensure_config(layout.config_dir, cert_dir=layout.cert_dir)
        return load_config(layout.config_dir)
    finally:
        globalLogPublisher.removeObserver(show)


def twistd_arguments(layout: Layout) -> list[str]:
    """The argv (after the interpreter) that runs nanocore as a twistd daemon."""
    return [
        "-c",
        TWISTD_BOOTSTRAP,
        "--pidfile",
        str(layout.pid_file),
        "--logfile",
        str(layout.log_file),
        "nanocore",
        "--config-dir",
        str(layout.config_dir),
        "--data-dir",
        str(layout.data_dir),
        "--cert-dir",
        str(layout.cert_dir),
        "--log-dir",
        str(layout.log_dir),
    ]


def child_environment() -> dict[str, str]:
    """Our environment, with the folder holding the `nanocore` package first on PYTHONPATH.

    That folder also holds `twisted/plugins/nanocore_plugin.py` (in a checkout and once
    installed), so twistd finds the plugin either way.
    """
    environment = dict(os.environ)
    package_root = str(Path(nanocore.__file__).resolve().parent.parent)
    existing = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = package_root + os.pathsep + existing if existing else package_root
    return environment


def _twistd_reason(said: bytes) -> str | None:
    """What twistd printed, when it is whole: a refusal of `makeService` (SystemExit) is; the
    daemonize pipe's report ("An error has occurred: …") is cut at 100 bytes and is not."""
    text = said.decode("utf-8", errors="replace").strip()
    if not text or "An error has occurred" in text:
        return None
    if "Traceback (most recent call last)" in text:
        # An error twistd did not expect: its last line says what it was.
        text = text.splitlines()[-1]
    return " ".join(text.removeprefix("nanocore: ").split())


def show_run_log(console: Console, layout: Layout, mark: LogMark) -> None:
    """The end of this run's part of the log (never an earlier run's lines)."""
    lines = lines_since(layout.log_file, mark)[-LOG_TAIL_LINES:]
    if lines:
        console.complain(f"last lines of {layout.log_file} from this start:")
        console.complain("\n".join(lines))


def start_failed(console: Console, layout: Layout, mark: LogMark, said: bytes = b"") -> int:
    """Say in one line what failed and why; the log only when no reason was given.

    A daemon running now was started by another `nanocore start` meanwhile: twistd refused to
    start a second one on its pid file, in words about twistd's own options."""
    racing = running_pid(layout.pid_file, exiting=False)  # not this start's, failing
    if racing is not None:
        console.complain(f"core is already running, current pid {racing}")
        return EXIT_FAILURE
    reason = reason_in(lines_since(layout.log_file, mark)) or _twistd_reason(said)
    if reason is None:
        console.complain("nanocore failed to start")
        show_run_log(console, layout, mark)
    else:
        console.complain(f"nanocore failed to start: {reason}")
        if layout.log_file.exists():
            console.complain(f"details in {layout.log_file}")
    return EXIT_FAILURE


async def _api_ready(reactor: Any, address: str, port: int) -> bool:
    """Whether the API answers its version document: 503 while the store opens, 200 once the
    Core serves. A foreign listener on the port does not pass for a started nanocore."""
    agent = Agent(reactor, connectTimeout=1)
    try:
        response = await agent.request(b"GET", f"http://{address}:{port}/api/v1/".encode())
        await readBody(response)
    except (ConnectError, ResponseFailed, ConnectionLost):
        return False
    return bool(response.code == 200)


async def _wait_until_serving(
    reactor: Any, layout: Layout, address: str, port: int, timeout: float
) -> int | None:
    """Poll until the API serves (the daemon's pid) or the daemon is gone (None)."""
    waited = 0.0
    while waited < timeout:
        pid = running_pid(layout.pid_file)
        if pid is None:
            return None
        if await _api_ready(reactor, address, port):
            return pid
        await deferLater(reactor, POLL_INTERVAL, lambda: None)
        waited += POLL_INTERVAL
    return None


async def start(reactor: Any, layout: Layout, console: Console) -> int:
    pid = running_pid(layout.pid_file)
    if pid is not None:
        console.complain(f"core is already running, current pid {pid}")
        return EXIT_FAILURE
    try:
        config = check_config(layout, console)
    except ConfigError as error:
        console.complain(f"nanocore failed to start: config error: {error}")
        return EXIT_FAILURE
    except CannotPrepare as error:
        console.complain(f"nanocore failed to start: {error}")
        return EXIT_FAILURE
    except OSError as error:
        console.complain(f"nanocore failed to start: cannot prepare {_os_reason(error)}")
        return EXIT_FAILURE
    leftover = clear_stale(layout.pid_file, console)
    if leftover is not None:
        console.complain(f"nanocore failed to start: {leftover}")
        return EXIT_FAILURE
    mark = LogMark.of(layout.log_file)
    try:
        launch: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
            sys.executable,
            twistd_arguments(layout),
            env=child_environment(),
            path=str(Path.cwd()),
            reactor=reactor,
        )
    except OSError as error:
        console.complain(
            f"nanocore failed to start: cannot run {sys.executable}: {error.strerror or error}"
        )
        return EXIT_FAILURE
    launch.addTimeout(START_TIMEOUT, reactor)
    try:
        output, errors, code = await launch
    except ProcessTimeout:
        console.complain(f"nanocore did not report its start within {START_TIMEOUT:.0f} s")
        show_run_log(console, layout, mark)
        return EXIT_FAILURE
    if code != 0:
        # The daemon that failed may still be exiting, its pid file not yet removed: gone
        # first, so that only a daemon another start ran is taken for one running.
        await _wait_for_exit(reactor, layout.pid_file, EXIT_GRACE)
        return start_failed(console, layout, mark, errors + output)
    # The daemon wrote the port it bound before it reported its start (api.cfg may say 0);
    # a daemon that failed after detaching may have removed it again as it stopped.
    port = read_port(layout.api_port_file)
    address = config.domain.listen_address
    if port is None:
        await _wait_for_exit(reactor, layout.pid_file, STOP_TIMEOUT)
        pid = None
    else:
        pid = await _wait_until_serving(reactor, layout, address, port, START_TIMEOUT)
    if pid is None:
        still_running = running_pid(layout.pid_file)
        if still_running is None:
            return start_failed(console, layout, mark)
        console.complain(
            f"nanocore (pid {still_running}) runs but its API did not answer within"
            f" {START_TIMEOUT:.0f} s"
        )
        show_run_log(console, layout, mark)
        return EXIT_FAILURE
    console.say(version_line())
    console.say(f"API http://{address}:{port}/api/v1/ ; log {layout.log_file}")
    console.say(f"core started, pid {pid}")
    return EXIT_OK


# --- stop, status, halt --------------------------------------------------------------------


async def _wait_for_exit(reactor: Any, pid_file: Path, timeout: float) -> bool:
    waited = 0.0
    while running_pid(pid_file) is not None:
        if waited >= timeout:
            return False
        await deferLater(reactor, POLL_INTERVAL, lambda: None)
        waited += POLL_INTERVAL
    return True


def clear_stale(pid_file: Path, console: Console) -> str | None:
    """Remove a pid file that names no running daemon; why it stays, if it cannot be removed."""
    try:
        removed = remove_stale(pid_file)
    except OSError as error:
        return f"cannot remove the stale pid file {pid_file}: {error.strerror or error}"
    if removed:
        console.say(f"removed stale pid file {pid_file}")
    return None


def _leftover(pid_file: Path, console: Console) -> None:
    """After the daemon is gone, a pid file that stays is worth a warning, not a failure: the
    command did what it was asked, and `start` takes a stale pid file for what it is."""
    leftover = clear_stale(pid_file, console)
    if leftover is not None:
        console.complain(f"warning: {leftover}")


def _signal(pid: int, number: signal.Signals, console: Console) -> bool:
    """Send `number` to the daemon; False (said in one line) when this user may not."""
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass  # it exited meanwhile; waiting for its exit ends at once
    except PermissionError as error:
        console.complain(
            f"cannot send {number.name} to core (pid {pid}): {error.strerror};"
            " run the command as the user that started it"
        )
        return False
    return True


async def stop(reactor: Any, pid_file: Path, console: Console) -> int:
    pid = running_pid(pid_file)
    if pid is None:
        _leftover(pid_file, console)
        console.say("core is already stopped")
        return EXIT_OK
    if not _signal(pid, signal.SIGTERM, console):
        return EXIT_FAILURE
    if not await _wait_for_exit(reactor, pid_file, STOP_TIMEOUT):
        console.complain(
            f"core (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s; `nanocore halt` kills it"
        )
        return EXIT_FAILURE
    _leftover(pid_file, console)
    console.say(f"stop core success (pid {pid})")
    return EXIT_OK


def status(pid_file: Path, console: Console) -> int:
    pid = running_pid(pid_file)
    if pid is not None:
        console.say(f"core is running, current pid {pid}")
        return EXIT_OK
    if pid_file.exists():
        console.say(f"core is stopped (stale pid file {pid_file})")
    else:
        console.say("core is stopped")
    return EXIT_NOT_RUNNING


async def halt(reactor: Any, pid_file: Path, console: Console) -> int:
    pid = running_pid(pid_file)
    if pid is None:
        _leftover(pid_file, console)
        console.say("core is already stopped")
        return EXIT_OK
    if not _signal(pid, signal.SIGKILL, console):
        return EXIT_FAILURE
    if not await _wait_for_exit(reactor, pid_file, STOP_TIMEOUT):
        console.complain(f"core (pid {pid}) survived SIGKILL for {STOP_TIMEOUT:.0f} s")
        return EXIT_FAILURE
    _leftover(pid_file, console)
    console.say(f"core halted (pid {pid} killed)")
    return EXIT_OK


# --- import-nano ---------------------------------------------------------------------------


async def import_nano(source: Path, data_dir: Path, console: Console) -> int:
    pid_file = data_dir / PID_FILE_NAME
    pid = running_pid(pid_file)
    if pid is not None:
        console.complain(f"core is running (pid {pid}); stop it before importing")
        return EXIT_FAILURE
    try:
        importer = importlib.import_module("nanocore.store.importer")
    except ImportError:
        console.complain("import-nano is not available in this build of nanocore")
        return EXIT_FAILURE
    try:
        report = await maybeDeferred(importer.run_import, source, data_dir)
    except importer.ImportRefused as refused:
        console.complain(f"import refused: {refused}")
        return EXIT_FAILURE
    for warning in report.warnings:
        console.complain(f"warning: {warning}")
    console.say(f"imported {source} into {data_dir}")
    if report.placed:
        console.say(f"image files placed in {data_dir}: {len(report.placed)}")
    return EXIT_OK


# --- entry point ---------------------------------------------------------------------------


async def run_command(reactor: Any, options: CommandOptions, console: Console) -> int:
    """Run the parsed command; return the process exit code.

    A file the command could not use, which no step expected, is still one line naming it
    and the reason, never a traceback."""
    try:
        return await _run_command(reactor, options, console)
    except OSError as error:
        console.complain(f"nanocore {options.subCommand}: {_os_reason(error)}")
        return EXIT_FAILURE


async def _run_command(reactor: Any, options: CommandOptions, console: Console) -> int:
    command = options.subCommand
    sub = options.subOptions
    if command == "start":
        return await start(reactor, sub.layout(), console)
    if command == "stop":
        return await stop(reactor, sub.pid_file(), console)
    if command == "status":
        return status(sub.pid_file(), console)
    if command == "halt":
        return await halt(reactor, sub.pid_file(), console)
    if command == "import-nano":
        return await import_nano(sub["source"], Path(sub["data-dir"]).absolute(), console)
    if command == "call":
        return await call(reactor, sub, console, sys.stdin.buffer)
    if command == "backup":
        return await backup(reactor, sub, console)
    if command == "restore":
        return restore(sub, console)
    raise AssertionError(f"unhandled command {command!r}")


def parse(argv: Sequence[str], console: Console) -> CommandOptions | int:
    """Parse `argv` (without the program name); an exit code when there is nothing to run."""
    options = CommandOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as error:
        # A command's own usage when the error is in its arguments.
        shown = getattr(options, "subOptions", options)
        console.complain(f"{shown}\nnanocore: {error}")
        return EXIT_USAGE
    except SystemExit as done:  # --help
        return int(done.code or 0)
    return options


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The `nanocore` console script and `python -m nanocore`."""
    console = Console(sys.stdout, sys.stderr)
    parsed = parse(sys.argv[1:] if argv is None else argv, console)
    if isinstance(parsed, int):
        sys.exit(parsed)
    options = parsed

    async def command(reactor: Any) -> None:
        raise SystemExit(await run_command(reactor, options, console))

    react(command)
