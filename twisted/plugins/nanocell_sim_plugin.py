"""``twistd nanocell-sim``: N simulated Cells against a Core, for demos and load."""

from twisted.application.service import ServiceMaker

nanocell_sim = ServiceMaker(
    "nanocell-sim",
    "nanocore.testing.simtap",
    "Run simulated Nano Cells (FakeCell) against a nanocore link endpoint",
    "nanocell-sim",
)
