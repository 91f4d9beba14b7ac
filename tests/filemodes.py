"""Tests of files and folders nanocore may not write, where a mode can say so."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest


def skip_unless_modes_bind() -> None:
    """Root with CAP_DAC_OVERRIDE writes where a mode says no, so a test of a read-only file
    would prove nothing; probed rather than read from `os.geteuid()`, so that root without
    the capability (`setpriv --bounding-set=-dac_override,-dac_read_search`) runs them."""
    probe = Path(tempfile.mkdtemp())
    try:
        probe.chmod(0o500)
        try:
            (probe / "written").touch()
        except PermissionError:
            return
        raise SkipTest(
            f"file modes do not bind this user (uid {os.geteuid()}, with CAP_DAC_OVERRIDE)"
        )
    finally:
        probe.chmod(0o700)
        shutil.rmtree(probe)
