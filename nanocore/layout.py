"""Where nanocore keeps its files: the four runtime folders and the names inside them.

Both `twistd nanocore` and `nanocore start|stop|status|halt` take the same folder options, so
they are declared once here. The original hangs everything off the executable's directory;
nanocore takes each folder from an option whose default is relative to the working directory.
"""

from __future__ import annotations

import errno
from pathlib import Path

from attrs import frozen
from twisted.python import usage

from nanocore.options import NanocoreOptions

#: Pid file name inside the data folder (the original keeps `core.pid` next to the binary).
PID_FILE_NAME = "core.pid"
#: Log file name inside the log folder, as in the original.
LOG_FILE_NAME = "core.log"
#: File in the log folder where fatal errors and deaths by signal leave tracebacks (nanocore).
FAULT_FILE_NAME = "core-fault.log"
#: File in the data folder holding the API port the running daemon bound (new in nanocore).
API_PORT_FILE_NAME = "api.port"

#: Mode for every folder nanocore creates: only the service account reads its secrets.
FOLDER_MODE = 0o700


@frozen
class Layout:
    """The four runtime folders, as absolute paths."""

    config_dir: Path
    data_dir: Path
    cert_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE_NAME

    @property
    def api_port_file(self) -> Path:
        return self.data_dir / API_PORT_FILE_NAME

    @property
    def log_file(self) -> Path:
        return self.log_dir / LOG_FILE_NAME

    @property
    def fault_file(self) -> Path:
        return self.log_dir / FAULT_FILE_NAME

    def create_folders(self) -> None:
        """Create missing folders with mode 0700; existing folders are left as they are.

        A folder option naming a file is refused before any folder is made, saying so (mkdir
        would say "File exists" after making the others)."""
        folders = (self.config_dir, self.data_dir, self.cert_dir, self.log_dir)
        for folder in folders:
            if folder.exists() and not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
        for folder in folders:
            folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)


class LayoutOptions(NanocoreOptions):
    """The folder options shared by `twistd nanocore` and `nanocore start`.

    Parsed values are `Path`s exactly as given (relative paths stay relative); `layout()`
    resolves them against the current directory.
    """

    optParameters = [
        ["config-dir", None, "config", "folder holding domain.cfg, api.cfg and image.cfg"],
        ["data-dir", None, "data", "folder holding the state database and core.pid"],
        ["cert-dir", None, "cert", "folder holding the cluster CA and the image certificate"],
        ["log-dir", None, "log", "folder holding core.log"],
    ]

    def postOptions(self) -> None:
        for name in ("config-dir", "data-dir", "cert-dir", "log-dir"):
            value = self[name]
            if not str(value):
                raise usage.UsageError(f"--{name} must not be empty")
            self[name] = Path(value)

    def layout(self) -> Layout:
        return Layout(
            config_dir=Path(self["config-dir"]).absolute(),
            data_dir=Path(self["data-dir"]).absolute(),
            cert_dir=Path(self["cert-dir"]).absolute(),
            log_dir=Path(self["log-dir"]).absolute(),
        )
