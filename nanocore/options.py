"""What every nanocore command line shares: `--version` names nanocore, not Twisted.

`usage.Options` answers `--version` with "Twisted version: …", which tells an operator nothing
about the program they run. Every nanocore command (`nanocore …`, `twistd nanocore`,
`twistd nanocell-sim`) takes its options from `NanocoreOptions` instead.
"""

from __future__ import annotations

import platform
from typing import NoReturn

from twisted.copyright import version as twisted_version
from twisted.python import usage

from nanocore import COMPATIBLE_CORE_VERSION, __version__


def version_line() -> str:
    """nanocore's version first (what an operator asks for), then what it runs on."""
    return (
        f"nanocore {__version__} (compatible with Nano Core {COMPATIBLE_CORE_VERSION};"
        f" Twisted {twisted_version}, Python {platform.python_version()})"
    )


class NanocoreOptions(usage.Options):
    def opt_version(self) -> NoReturn:
        """Print the nanocore version and exit."""
        print(version_line())
        raise SystemExit(0)
