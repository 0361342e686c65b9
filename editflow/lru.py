"""The per-worker LRU cache every engine and masker uses for what it computes once per input
(garments, faces, reference embeddings, masks, detections), keyed by content hashes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

V = TypeVar("V")


class LRUCache(Generic[V]):
    """At most `size` values, least recently used dropped first. Size 0 (or `enabled=False`) keeps
    nothing; a None key is never cached (an input without a content hash)."""

    def __init__(self, size: int = 32, enabled: bool = True) -> None:
        self.size = max(0, int(size)) if enabled else 0
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def get(self, key: Hashable) -> V | None:
        """The cached value (now the most recent) or None; counts a hit or a miss."""
        if key is not None and key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: V) -> None:
        if key is None or not self.enabled:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> tuple[V, bool]:
        """(value, True) when cached, else (make(), False) and remember it."""
        value = self.get(key)
        if value is not None:
            return value, True
        value = make()
        self.put(key, value)
        return value, False

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
