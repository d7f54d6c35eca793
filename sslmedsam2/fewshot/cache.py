"""A least-recently-used store bounded by the bytes of the tensors it holds.

Support encodings are reused by every query and support prompt outputs by every query of the same
in-plane size; kept forever they grow with supports x query sizes. Past the bound the oldest entry
goes, and whoever needs it again recomputes it: an exact fallback, only slower.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

V = TypeVar("V")


def tensor_bytes(value: object) -> int:
    """Bytes of the distinct storages of every tensor reachable through dicts, lists, tuples and
    dataclasses: views of one storage (batch slices, expanded encodings) count once."""
    storages: dict[int, int] = {}
    _collect(value, storages)
    return sum(storages.values())


def _collect(value: object, storages: dict[int, int]) -> None:
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, storages)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, storages)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            _collect(getattr(value, field.name), storages)


class TensorCache:
    """Values by key, evicted least recently used first once their tensors exceed ``limit_bytes``.

    A value larger than the whole bound is returned but not kept.
    """

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError(f"limit_bytes must be >= 0, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value stored under ``key``, or ``make()``'s, kept if it fits the bound."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]  # type: ignore[return-value]
        value = make()
        size = tensor_bytes(value)
        if size > self.limit_bytes:
            log.debug("cache: %s (%.1f MB) exceeds the %.1f MB bound; not kept",
                      key, size / 2**20, self.limit_bytes / 2**20)
            return value
        self._entries[key] = (value, size)
        self.used_bytes += size
        while self.used_bytes > self.limit_bytes:
            evicted, (_, freed) = self._entries.popitem(last=False)
            self.used_bytes -= freed
            log.debug("cache: evicted %s (%.1f MB)", evicted, freed / 2**20)
        return value
