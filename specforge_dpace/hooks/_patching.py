"""Record-and-restore attribute patching: every patch can be reverted to the very same object."""

from __future__ import annotations

from typing import Any

_MISSING = object()


class PatchSet:
    """Attributes set on modules or classes, with their originals, reverted in reverse order."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._records: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, attr: str, value: Any) -> Any:
        """Set ``owner.attr = value``; returns the original (``None`` if it did not exist)."""
        # vars() so a class gets back its own attribute (a plain function), never an inherited one.
        original = vars(owner).get(attr, _MISSING) if isinstance(owner, type) else getattr(owner, attr, _MISSING)
        self._records.append((owner, attr, original))
        setattr(owner, attr, value)
        return None if original is _MISSING else original

    def revert(self) -> None:
        while self._records:
            owner, attr, original = self._records.pop()
            if original is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)

    def __len__(self) -> int:
        return len(self._records)
