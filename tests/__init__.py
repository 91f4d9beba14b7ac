"""nanocore tests.

Hypothesis runs without a deadline everywhere: the suite shares two cores with other work,
and timing belongs in benchmarks/, never in assertions.
"""

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=100)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
