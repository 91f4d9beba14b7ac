"""Domain errors of the store: each carries a sentence a client or operator can act on."""

from __future__ import annotations


class StoreError(Exception):
    """A change or an open was refused; ``message`` names the entity and the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Conflict(StoreError):
    """The change would duplicate a unique name/key or break a rule of the schema."""


class NotFound(StoreError):
    """The entity to change, or an entity it refers to, does not exist."""


class StillReferenced(StoreError):
    """The entity cannot be deleted while another entity refers to it."""


class DamagedStore(StoreError):
    """The database failed its integrity checks or cannot be read; Core refuses to start."""


class CommitFailed(StoreError):
    """The database could not commit (disk full, I/O error): nothing of the batch was applied,
    and a later commit may succeed; ``message`` is what the client reads."""


class StoreClosed(StoreError):
    """The store was closed; nothing more can be committed."""
