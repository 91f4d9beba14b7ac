"""twistd plugin: makes `twistd nanocore` available. Only the ServiceMaker lives here."""

from twisted.application.service import ServiceMaker

nanocore = ServiceMaker(
    "nanocore",
    "nanocore.tap",
    "Nano Core control node of a Nano virtualization cluster",
    "nanocore",
)
