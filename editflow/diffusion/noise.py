"""Every row's noise for one sampler chain, drawn ahead on the CPU and sent to the device in a few copies.

The masked sampler needs fresh noise at its start, after every denoising step (RePaint's known
region; DDIM's variance when eta > 0) and at every undo. Drawn on the CPU and copied at its own
step, each piece is a blocking copy from pageable memory: the host waits for the GPU to drain
before it can launch the next step, so the GPU idles once per step. `NoiseTape` draws the noise
of many steps at once, in exactly the order the loop takes it, pins it and copies it without
blocking, so the host stays ahead of the GPU. Each row still draws only from its own generator
and in the same order as drawing step by step, so every number (and a row's bytes) is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["NoiseTape", "TAPE_BYTES"]

#: device memory one window of drawn-ahead noise may take (all rows of the batch together)
TAPE_BYTES = 64 << 20


class NoiseTape:
    """The next standard-normal tensors of a batch, `[B, *shape]` each, row i from `generators[i]`.

    Args:
        generators: one CPU generator per row.
        like: a tensor with the batch's sample shape, dtype and device (the chain's `x`).
        draws: for each tensor the chain will take, in order, the dtype it is drawn in (float32
            for editflow's own noise, the sample dtype for what diffusers' ``randn_tensor`` would
            draw); every tensor comes out in `like`'s dtype.
        window: tensors drawn and copied together (default: as many as `TAPE_BYTES` holds);
            1 draws each one just before it is taken.
    """

    def __init__(self, generators: Sequence[torch.Generator], like: torch.Tensor,
                 draws: Sequence[torch.dtype], window: int | None = None) -> None:
        self.generators = list(generators)
        self.row_shape = (1, *like.shape[1:])
        self.dtype, self.device = like.dtype, like.device
        self.draws = list(draws)
        per_draw = max(1, like.numel() * like.element_size())
        self.window = max(1, int(window) if window else TAPE_BYTES // per_draw)
        self.taken = 0
        self._ready: list[torch.Tensor] = []
        #: host->device copies made (one per window)
        self.copies = 0

    def __len__(self) -> int:
        """Tensors left to take."""
        return len(self.draws) - self.taken

    def next(self) -> torch.Tensor:
        """The next tensor of the chain's noise (`ValueError` past the declared draws)."""
        if not self._ready:
            self._fill()
        self.taken += 1
        return self._ready.pop(0)

    def _fill(self) -> None:
        start = self.taken
        kinds = self.draws[start:start + self.window]
        if not kinds:
            raise ValueError(f"the noise tape holds {len(self.draws)} draws; the chain asked for more")
        # Row by row, in the chain's order: row i's generator sees the same sequence of calls as
        # drawing at each step (its neighbours' generators are independent of it).
        per_row = [[torch.randn(self.row_shape, generator=g, dtype=dtype) for dtype in kinds] for g in self.generators]
        block = torch.stack([torch.cat([row[k] for row in per_row]).to(self.dtype) for k in range(len(kinds))])
        if self.device.type == "cuda":
            block = block.pin_memory()  # a pinned source lets the copy run without blocking the host
        if block.device != self.device:
            block = block.to(self.device, non_blocking=True)
            self.copies += 1
        self._ready = list(block.unbind(0))
