"""Closed-form patch denoiser: the optimal denoiser of an empirical patch distribution.

For every query patch q of the noisy image the clean estimate is the posterior mean over a data set
of clean patches y (Kamb & Ganguli's ELS machine; Qiu, Kutulakos & Lindell's efficient-SID):

    x̂0(q) = Σ_y softmax_y( -|q - a·y|² / (2 s²) ) · y ,   a = sqrt(ᾱ_t),  s² = 1 - ᾱ_t

Expanding the norm and dropping |q|² (constant per query) makes the logits one GEMM plus a
per-datum bias, `(a q·yᵀ - a²|y|²/2) / s²`, so the whole denoiser is attention with q = noisy
patches, k = a·y, v = y. Overlapping patch estimates are folded back with a Gaussian (or uniform)
window. Only query patches that touch the mask are computed and the known pixels of the estimate
are the known image itself (exact data consistency).

The data set is built once per sampler call by `build_condition`: the image's own patches that lie
fully in the known region, or a reference image's patches (try-on, makeup), capped in number by a
nearest-ring + random subset drawn with the row's generator. An optional layout prior
(`locality`, in the spirit of Kamb & Ganguli's location-aware LS/bbELS machines) adds
-|u_q - u_d|²/(2 l²) between patch centres as two extra GEMM columns: at high noise it dominates, so
the fill continues its own border; at low noise appearance does. Patch size against noise level is
the caller's business: run a pyramid (fixed k, coarse levels at high noise), as the builtin engine
does.

CPU note: the softmax is done by hand with logits clamped at -80 (below, exp() gives float32
denormals, which make exp and the following GEMM ~10× slower on x86).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from editflow.diffusion.denoiser import PixelSpace

Window = Literal["gaussian", "uniform"]


@dataclass
class PatchPriorCondition:
    """Everything the patch denoiser needs for one batch at one pyramid level.

    Build it with `build_condition`; the per-row tensors are precomputed so `predict` only runs
    the patch matching.
    """

    known: torch.Tensor  # [B, 3, H, W] in [-1, 1]: the clean image at this level
    mask: torch.Tensor  # [B, 1, H, W] binary, 1 = edit
    data: list[torch.Tensor]  # per row [N, D] clean patches (unfold order: C, ky, kx)
    data_sqnorm: list[torch.Tensor]  # per row [N] squared norms of `data`
    data_pos: list[torch.Tensor]  # per row [N, 2] patch centres / level long side (layout prior)
    query_pos: list[torch.Tensor]  # per row [M, 2] same for the query patches
    query_index: list[torch.Tensor]  # per row [M, D] int64 indices into the flattened [3*H*W] image
    edit_index: list[torch.Tensor]  # per row [E] flat indices of masked pixels covered by a query
    edit_scale: list[torch.Tensor]  # per row [E] 1 / summed fold window at those pixels
    window: torch.Tensor  # [D] fold window over one patch
    patch_size: int = 7
    #: layout prior length (fraction of the level's long side); None = pure appearance matching.
    locality: float | None = None
    level: int = 0  # pyramid level index, 0 = finest
    levels: int = 1
    info: dict = field(default_factory=dict)  # free-form, for logs and tests

    @property
    def batch_size(self) -> int:
        return int(self.known.shape[0])


class PatchPriorDenoiser(PixelSpace):
    """Denoiser (pixel space, predicts the clean sample) built on the closed-form patch prior.

    `chunk_elems` bounds the size of one logits block (queries × data) so memory stays bounded
    whatever the number of patches; `backend` "gemm" runs addmm + softmax + mm, "sdpa" the same
    maths fused through `scaled_dot_product_attention` (homogeneous coordinates).
    """

    prediction: Literal["epsilon", "sample"] = "sample"

    def __init__(self, chunk_elems: int = 1 << 22, backend: Literal["gemm", "sdpa"] = "gemm") -> None:
        self.chunk_elems = int(chunk_elems)
        self.backend = backend
        #: matching FLOPs (2·M·N·D per logits GEMM + 2·M·N·D per weighted average) since reset.
        self.flops = 0
        self.calls = 0

    @torch.no_grad()
    def predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        alpha_bar_t: torch.Tensor,
        condition: PatchPriorCondition,
    ) -> torch.Tensor:
        """Posterior-mean clean estimate of `x_t` under each row's patch data set."""
        self.calls += 1
        out = condition.known.to(device=x_t.device, dtype=x_t.dtype).clone()
        abar = alpha_bar_t.reshape(-1).to(torch.float64)
        if abar.numel() == 1:
            abar = abar.expand(x_t.shape[0])
        for b in range(x_t.shape[0]):
            idx = condition.query_index[b]
            data = condition.data[b]
            if idx.numel() == 0 or data.shape[0] == 0:
                continue
            a = math.sqrt(float(abar[b].clamp(0.0, 1.0)))
            s2 = max(1.0 - float(abar[b]), 1e-12)
            queries = x_t[b].reshape(-1)[idx]  # [M, D]
            if condition.locality:
                # Layout prior -|u_q - u_d|^2 / (2 l^2) rides along in the same GEMM as 2 extra columns.
                inv = 1.0 / condition.locality**2
                queries = torch.cat([queries, condition.query_pos[b] * inv], dim=1)
                extra = (condition.data_pos[b], (condition.data_pos[b] ** 2).sum(dim=1) * (-0.5 * inv))
            else:
                extra = None
            est = self._match(queries, data, condition.data_sqnorm[b], a, s2, extra)
            flat = torch.zeros_like(out[b]).reshape(-1)
            flat.index_add_(0, idx.reshape(-1), (est * condition.window).reshape(-1))
            # Estimated pixels inside the mask; the known image everywhere else.
            edit = condition.edit_index[b]
            out[b].reshape(-1)[edit] = flat[edit] * condition.edit_scale[b]
        return out

    def _match(
        self,
        queries: torch.Tensor,
        data: torch.Tensor,
        sqnorm: torch.Tensor,
        a: float,
        s2: float,
        extra: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Softmax-weighted average of `data` for each query, chunked over queries.

        `extra` = (key columns [N, e], bias [N]) appended to the keys and the logits' bias; the
        queries then carry e matching columns (the layout prior).
        """
        m = queries.shape[0]
        n, d = data.shape
        self.flops += 4 * m * n * d
        keys = data * (a / s2)  # [N, D]
        bias = sqnorm * (-(a * a) / (2.0 * s2))  # [N]
        if extra is not None:
            keys = torch.cat([keys, extra[0]], dim=1)
            bias = bias + extra[1]
        if self.backend == "sdpa":
            return self._match_sdpa(queries, data, keys, bias)
        rows = max(1, self.chunk_elems // max(n, 1))
        out = torch.empty(m, d, dtype=data.dtype, device=data.device)
        keys_t = keys.t()
        for i in range(0, m, rows):
            logits = torch.addmm(bias, queries[i : i + rows], keys_t)  # [rows, N]
            # Softmax by hand, in place: clamping at -80 keeps exp() out of the float32 denormal
            # range (exp(-80) ~ 1.8e-35), which otherwise slows exp and the next GEMM ~10x on CPU.
            logits.sub_(logits.amax(dim=1, keepdim=True)).clamp_(min=-80.0).exp_()
            total = logits.sum(dim=1, keepdim=True)
            block = out[i : i + rows]
            torch.mm(logits, data, out=block)
            block.div_(total)
        return out

    def _match_sdpa(self, queries: torch.Tensor, data: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Same maths through fused attention: q = [x, 1], k = [a·y/s², bias], v = y, scale 1."""
        ones = torch.ones(queries.shape[0], 1, dtype=queries.dtype, device=queries.device)
        q = torch.cat([queries, ones], dim=1)[None, None]
        k = torch.cat([keys, bias[:, None]], dim=1)[None, None]
        return F.scaled_dot_product_attention(q, k, data[None, None], scale=1.0)[0, 0]


# --------------------------------------------------------------------------------------------
# Building the condition


def patch_window(patch_size: int, kind: Window = "gaussian", rho: float = 0.25) -> torch.Tensor:
    """Fold window over one k×k patch, flattened to [k*k]; Gaussian std = rho·k."""
    if kind == "uniform":
        return torch.ones(patch_size * patch_size)
    r = torch.arange(patch_size, dtype=torch.float32) - (patch_size - 1) / 2.0
    g = torch.exp(-(r**2) / (2.0 * (rho * patch_size) ** 2))
    return (g[:, None] * g[None, :]).reshape(-1)


def _grid(size: int, patch: int, stride: int) -> torch.Tensor:
    """Top-left positions on a stride grid that always include the last one (full coverage)."""
    last = size - patch
    pos = list(range(0, last + 1, max(1, stride)))
    if pos[-1] != last:
        pos.append(last)
    return torch.tensor(pos, dtype=torch.int64)


def _patch_offsets(channels: int, height: int, width: int, patch: int) -> torch.Tensor:
    """Flat offsets [C*k*k] of a patch's pixels relative to its top-left, in unfold order."""
    c = torch.arange(channels)[:, None, None] * (height * width)
    y = torch.arange(patch)[None, :, None] * width
    x = torch.arange(patch)[None, None, :]
    return (c + y + x).reshape(-1)


def _touch_maps(mask: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each top-left position: (patch touches the mask, patch lies fully in the known region)."""
    m = (mask > 0).float()[None, None]  # [1, 1, H, W]
    touch = F.max_pool2d(m, patch, stride=1)[0, 0] > 0
    return touch, ~touch


def _ring_rank(mask: torch.Tensor, patch: int, cell: int = 4) -> torch.Tensor:
    """Coarse distance class of each top-left position to the mask (0 = touching), growing roughly
    geometrically; computed on a `cell`-times smaller grid because it only orders the data cap."""
    m = (mask > 0).float()[None, None]
    h, w = m.shape[-2:]
    coarse = F.max_pool2d(m, cell, stride=cell, ceil_mode=True)
    ch, cw = coarse.shape[-2:]
    rank = torch.full((ch, cw), float("inf"), device=mask.device)
    radius, level = 0, 0
    while True:
        size = 2 * radius + 1
        grown = F.max_pool2d(coarse, size, stride=1, padding=radius)[0, 0] > 0 if radius else coarse[0, 0] > 0
        rank[grown & torch.isinf(rank)] = float(level)
        if radius >= max(ch, cw) or not torch.isinf(rank).any():
            break
        radius, level = min(max(ch, cw), max(1, int(radius * 1.5) + 1)), level + 1
    rank[torch.isinf(rank)] = float(level + 1)
    # Rank of a top-left position = rank of the cell holding its patch centre.
    ys = (torch.arange(h - patch + 1) + patch // 2) // cell
    xs = (torch.arange(w - patch + 1) + patch // 2) // cell
    return rank[ys][:, xs]


def _patch_index(
    positions: torch.Tensor, width: int, offsets: torch.Tensor
) -> torch.Tensor:
    """positions [M, 2] (y, x) -> flat pixel indices [M, D]."""
    base = positions[:, 0] * width + positions[:, 1]
    return base[:, None] + offsets[None, :]


def _select_data(
    candidates: torch.Tensor,
    rank: torch.Tensor | None,
    max_data: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Cap the data positions: half nearest to the mask (ring), half random among the rest."""
    n = candidates.shape[0]
    if n <= max_data:
        return candidates
    perm = torch.randperm(n, generator=generator)
    if rank is None:
        return candidates[perm[:max_data]]
    # Stable sort of a random permutation by ring rank = nearest first, ties broken at random.
    ranks = rank[candidates[perm, 0], candidates[perm, 1]]
    order = perm[torch.sort(ranks, stable=True).indices]
    ring = order[: max_data // 2]
    rest = order[max_data // 2 :]
    pick = torch.randperm(rest.shape[0], generator=generator)[: max_data - ring.shape[0]]
    return candidates[torch.cat([ring, rest[pick]])]


def extract_patches(
    image: torch.Tensor,
    patch: int,
    stride: int = 1,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All k×k patches of `image` [C, H, W] on a stride grid -> ([N, C*k*k], top-left [N, 2]);
    `valid` [H, W] keeps only patches lying fully inside it."""
    c, h, w = image.shape
    pos = torch.cartesian_prod(_grid(h, patch, stride), _grid(w, patch, stride))
    if valid is not None:
        inside = F.max_pool2d((~valid.bool()).float()[None, None], patch, stride=1)[0, 0] == 0
        pos = pos[inside.cpu()[pos[:, 0], pos[:, 1]]]
    idx = _patch_index(pos, w, _patch_offsets(c, h, w, patch)).to(image.device)
    return image.reshape(-1)[idx], pos


def _mask_box(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """(y0, x0, height, width) of the mask's bounding box (the whole image if empty)."""
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    if ys.numel() == 0:
        return 0.0, 0.0, float(mask.shape[0]), float(mask.shape[1])
    return float(ys.min()), float(xs.min()), float(ys.max() - ys.min() + 1), float(xs.max() - xs.min() + 1)


def build_condition(
    known: torch.Tensor,
    mask: torch.Tensor,
    generators: list[torch.Generator] | None = None,
    *,
    references: list[torch.Tensor | None] | None = None,
    reference_masks: list[torch.Tensor | None] | None = None,
    include_known: bool = True,
    patch_size: int = 7,
    query_stride: int = 1,
    data_stride: int = 1,
    max_data: int = 4096,
    min_data: int = 64,
    locality: float | None = None,
    window: Window = "gaussian",
    window_rho: float = 0.25,
    level: int = 0,
    levels: int = 1,
) -> PatchPriorCondition:
    """Precompute data patches, query indices and fold weights for a batch at one level.

    known [B, 3, H, W] in [-1, 1] and mask [B, 1, H, W] (> 0 = edit). Row b's data set is the
    patches of `known[b]` lying fully in its known region (when `include_known`) plus the patches
    of `references[b]` [3, h, w] (only those fully inside `reference_masks[b]` [1, h, w] if given),
    capped at `max_data` by a nearest-ring + random subset drawn with `generators[b]`. When fewer
    than `min_data` known patches remain (a mask covering nearly everything) the whole known image,
    masked part included, is the data set. Query patches are the stride-`query_stride` grid
    positions whose patch touches the mask (the grid always includes the last row and column so
    every masked pixel is covered).

    `locality` (fraction of the level's long side) adds the layout prior -|u_q - u_d|²/(2 l²)
    between patch centres: known patches by their own position, reference patches by their
    position stretched from the reference onto the mask's bounding box (garment layout follows
    the mask).
    """
    bsz, c, h, w = known.shape
    device = known.device
    k = max(1, min(patch_size, h, w))
    long_side = float(max(h, w))
    offsets = _patch_offsets(c, h, w, k)
    win = patch_window(k, window, window_rho).to(device=device, dtype=known.dtype).repeat(c)
    binary = (mask > 0).to(known.dtype)
    data, sqnorm, dpos, qposs, qidx, eidx, escale = [], [], [], [], [], [], []
    qgrid = torch.cartesian_prod(_grid(h, k, query_stride), _grid(w, k, query_stride))
    dgrid = torch.cartesian_prod(_grid(h, k, data_stride), _grid(w, k, data_stride))
    centre = (k - 1) / 2.0

    def norm_pos(pos: torch.Tensor) -> torch.Tensor:
        return ((pos.float() + centre) / long_side).to(device=device, dtype=known.dtype)

    for b in range(bsz):
        gen = generators[b] if generators else None
        m_cpu = binary[b, 0].cpu()
        touch, free = _touch_maps(m_cpu, k)
        # Queries: grid positions whose patch touches the mask.
        qpos = qgrid[touch[qgrid[:, 0], qgrid[:, 1]]]
        idx = _patch_index(qpos, w, offsets).to(device)
        fw = torch.zeros(c * h * w, dtype=known.dtype, device=device)
        fw.index_add_(0, idx.reshape(-1), win.repeat(idx.shape[0]))
        edit = torch.nonzero((fw > 0) & (binary[b].expand(c, h, w).reshape(-1) > 0)).reshape(-1)
        qidx.append(idx)
        qposs.append(norm_pos(qpos))
        eidx.append(edit)
        escale.append(1.0 / fw[edit])

        ref = references[b] if references else None
        parts: list[torch.Tensor] = []
        parts_pos: list[torch.Tensor] = []
        if include_known:
            # Known-region patches, capped: nearest ring + random rest.
            cand = dgrid[free[dgrid[:, 0], dgrid[:, 1]]]
            rank: torch.Tensor | None = _ring_rank(m_cpu, k)
            if cand.shape[0] < min_data:
                cand, rank = dgrid, None  # nearly everything is masked: the whole image
            cand = _select_data(cand, rank, max_data if ref is None else max_data // 2, gen)
            parts.append(known[b].reshape(-1)[_patch_index(cand, w, offsets).to(device)])
            parts_pos.append(norm_pos(cand))
        if ref is not None:
            patches, rpos = _reference_patches(ref, reference_masks[b] if reference_masks else None, k,
                                               data_stride, min_data, device, known.dtype)
            cap = max_data - sum(p.shape[0] for p in parts)
            if patches.shape[0] > cap:
                pick = torch.randperm(patches.shape[0], generator=gen)[:cap]
                patches, rpos = patches[pick.to(device)], rpos[pick]
            # Reference layout stretched onto the mask's box.
            y0, x0, bh, bw = _mask_box(m_cpu)
            rh, rw = ref.shape[-2] - k + 1, ref.shape[-1] - k + 1
            mapped = torch.stack([y0 + rpos[:, 0].float() * (bh - k + 1) / max(rh, 1),
                                  x0 + rpos[:, 1].float() * (bw - k + 1) / max(rw, 1)], dim=1)
            parts.append(patches)
            parts_pos.append(norm_pos(mapped))
        rows = torch.cat(parts) if parts else known.new_zeros(0, c * k * k)
        data.append(rows.contiguous())
        sqnorm.append((rows * rows).sum(dim=1))
        dpos.append(torch.cat(parts_pos) if parts_pos else known.new_zeros(0, 2))
    return PatchPriorCondition(
        known=known,
        mask=binary,
        data=data,
        data_sqnorm=sqnorm,
        data_pos=dpos,
        query_pos=qposs,
        query_index=qidx,
        edit_index=eidx,
        edit_scale=escale,
        window=win,
        patch_size=k,
        locality=locality,
        level=level,
        levels=levels,
        info={"query_stride": query_stride, "data_stride": data_stride, "max_data": max_data},
    )


def _reference_patches(
    ref: torch.Tensor,
    ref_mask: torch.Tensor | None,
    k: int,
    stride: int,
    min_data: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of a reference image [3, h, w] (inside its mask when given) and their top-lefts."""
    ref = ref.to(device=device, dtype=dtype)
    valid = None if ref_mask is None else (ref_mask[0] > 0).cpu()
    if min(ref.shape[-2:]) < k:  # too small for one patch: upsample, drop the mask
        size = (max(k, ref.shape[-2]), max(k, ref.shape[-1]))
        ref, valid = F.interpolate(ref[None], size=size, mode="bilinear")[0], None
    patches, pos = extract_patches(ref, k, stride, valid)
    if patches.shape[0] < min_data and valid is not None:
        patches, pos = extract_patches(ref, k, stride)  # masked region too thin: whole reference
    return patches, pos
