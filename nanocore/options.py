"""What every nanocore command line shares: `--version` names nanocore, not Twisted.

`usage.Options` answers `--version` with "Twisted version: …", which tells an operator nothing
about the program they run. Every nanocore command (`nanocore …`, `twistd nanocore`,
`twistd nanocell-sim`) takes its options from `NanocoreOptions` instead.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Sequence
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


class AnyOrderOptions(NanocoreOptions):
    """Options before or after the positional arguments (`import-nano PATH --data-dir D`);
    getopt alone stops at the first argument. `--` ends the options."""

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        items = list(sys.argv[1:] if options is None else options)
        takes_value = {"--" + name[:-1] for name in self.longOpt if name.endswith("=")}
        flags: list[str] = []
        positional: list[str] = []
        while items:
            item = items.pop(0)
            if item == "--":
                positional.extend(items)
                break
            if item.startswith("-") and item != "-":
                flags.append(item)
                if item in takes_value and items:
                    flags.append(items.pop(0))
            else:
                positional.append(item)
        super().parseOptions([*flags, "--", *positional])
