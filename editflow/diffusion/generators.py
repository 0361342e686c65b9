"""One seeding rule for every engine: each row gets its own fresh CPU generator from its seed."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["row_generators"]


def row_generators(seeds: Iterable[int]) -> list[torch.Generator]:
    """One fresh CPU generator per row, seeded `seed % 2**63`.

    Manifest seeds are already in [0, 2**63) (int64), where the modulo changes nothing; it maps a
    caller's negative or larger seed into torch's range the same way everywhere. CPU generators
    make a row's noise the same on every device, alone or in any batch."""
    return [torch.Generator(device="cpu").manual_seed(int(seed) % (2**63)) for seed in seeds]
