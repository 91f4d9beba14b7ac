"""Simulated NFS backends: what simulated Cells on the same shared storage all see.

On a real pool with NFS storage every Cell mounts the same export, so a guest's volumes (and
the definition a Cell keeps beside them) are visible to every Cell of the pool: that is what
lets a target attach a guest its source created, and the source release it (cell-protocol
§5.7). Here an export is a mapping of guest id to :class:`SimulatedGuest`, one per
``(host, target)``: a FakeCell keeps the guests it creates on its pool's export, attaches
guests from it, and deletes them from it; detaching leaves them there for another Cell.
A Cell on local storage keeps its guests in an export of its own that no other Cell sees.
"""

from __future__ import annotations

from nanocore.testing.guests import SimulatedGuest

#: One export: guest id -> the guest's volumes and definition.
Volumes = dict[str, SimulatedGuest]


class SharedStorage:
    """Every simulated NFS export of one simulation (a process of FakeCells, a test)."""

    def __init__(self) -> None:
        self._exports: dict[tuple[str, str], Volumes] = {}

    def export(self, host: str, target: str) -> Volumes:
        """The volumes on ``host:target``, shared by every Cell that mounts it."""
        return self._exports.setdefault((host, target), {})
