"""nanocore tests.

Hypothesis runs without a deadline everywhere: the suite shares two cores with other work,
and timing belongs in benchmarks/, never in assertions.

Every store the suite opens (hundreds, daemons included: they inherit the environment) keeps a
disk reserve of 64 KiB, not the 16 MiB of a real Core (``nanocore.store.reserve``).
"""

import os

from hypothesis import settings

os.environ.setdefault("NANOCORE_RESERVE_BYTES", str(64 << 10))

settings.register_profile("ci", deadline=None, max_examples=100)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
