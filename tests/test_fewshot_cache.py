"""The byte-bounded LRU store behind the few-shot support caches."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from sslmedsam2.fewshot.cache import TensorCache, tensor_bytes
from sslmedsam2.fewshot.tffs import TFFSConfig


@dataclass
class Holder:
    frames: torch.Tensor
    features: list[dict]


def test_tensor_bytes_counts_each_storage_once():
    batch = torch.zeros(4, 10)  # 160 bytes
    shared = torch.zeros(1, 5)  # 20 bytes, expanded below: still 20
    value = Holder(batch, [{"f": batch[i : i + 1], "pos": shared.expand(3, 5)} for i in range(4)])
    assert tensor_bytes(value) == 160 + 20
    assert tensor_bytes({"a": [torch.zeros(2, dtype=torch.bfloat16)], "b": None}) == 4


def test_least_recently_used_goes_first():
    cache = TensorCache(limit_bytes=100)
    made = []

    def make(key: str) -> torch.Tensor:
        made.append(key)
        return torch.zeros(10)  # 40 bytes

    for key in ("a", "b", "a", "c"):  # "a" touched after "b": "b" is the oldest when "c" comes
        cache.get(key, lambda key=key: make(key))
    assert made == ["a", "b", "c"]
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.used_bytes == 80


def test_a_value_larger_than_the_bound_is_returned_not_kept():
    cache = TensorCache(limit_bytes=16)
    value = cache.get("big", lambda: torch.zeros(8))
    assert value.shape == (8,) and len(cache) == 0 and cache.used_bytes == 0
    with pytest.raises(ValueError, match=">= 0"):
        TensorCache(limit_bytes=-1)
    with pytest.raises(ValueError, match="cache_limit_mb"):
        TFFSConfig(cache_limit_mb=-1)
