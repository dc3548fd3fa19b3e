"""The MAR level (FractalMAR's generator): random order, bidirectional, masked.

Sequence = [guiding-pixel token] + [cond_{n-1}, ..., cond_0] + [patch tokens, masked ones
replaced by a learned token]; pre-LN ViT blocks. Each patch hands up to five conditions to
the next level: its own hidden state and those of the patches above, right, below and left.
A next level that consumes n of them (one for the pixel head or an AR level) gets the first n,
and only those are computed.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import LevelConfig
from ..nn import ViTBlock, select_tokens
from ..sampling import Known, SampleContext, coding_order, compiled, cosine_masked_after
from .base import Level, LevelOutput, NextLevel, Normalize, complete_conds, patchify, unpatchify
from .pixel import PixelHead

# Neighbour offsets (row, column) of the five conditions: self, above, right, below, left.
NEIGHBOURS = ((0, 0), (-1, 0), (0, 1), (1, 0), (0, -1))
MASK_RATIO_STD = 0.25  # training mask ratio ~ N(1, 0.25) truncated to [0, 1]


def training_mask(batch: int, seq_len: int, device, generator=None) -> torch.Tensor:
    """Per row, ceil(N * ratio) random tokens masked, ratio ~ N(1.0, 0.25) truncated to [0, 1]."""
    z = torch.randn(batch, device=device, generator=generator).abs()
    while (z > 4.0).any():  # the truncation at ratio 0 (4 standard deviations): resample those rows
        z = torch.where(z > 4.0, torch.randn(batch, device=device, generator=generator).abs(), z)
    num_masked = torch.ceil(seq_len * (1.0 - MASK_RATIO_STD * z))  # (B,)
    return mask_first_in_order(random_orders(batch, seq_len, device, generator), num_masked)


def uniform_training_mask(batch: int, seq_len: int, device, generator=None) -> torch.Tensor:
    """Per row, k ~ U{1..N} random tokens masked: every stage of random-order generation is trained
    as often as any other (the official schedule above almost never masks fewer than half the
    tokens, yet generation's last steps, and inpainting with much known, predict exactly there)."""
    k = torch.randint(1, seq_len + 1, (batch,), device=device, generator=generator).float()
    return mask_first_in_order(random_orders(batch, seq_len, device, generator), k)


def likelihood_mask(batch: int, seq_len: int, device, generator=None) -> torch.Tensor:
    """One count k ~ U{1..N} for the whole batch, random positions per row (unbiased random-order NLL)."""
    k = torch.randint(1, seq_len + 1, (1,), device=device, generator=generator).float().expand(batch)
    return mask_first_in_order(random_orders(batch, seq_len, device, generator), k)


def random_orders(batch: int, seq_len: int, device, generator=None, last: torch.Tensor | None = None):
    """A random permutation per row (B, N); tokens flagged in `last` (B, N) go after all others."""
    keys = torch.rand(batch, seq_len, device=device, generator=generator)
    if last is not None:
        keys = keys + 2.0 * last
    return keys.argsort(dim=1)


def mask_first_in_order(orders: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Bool (B, N): the first count[b] tokens of orders[b] are masked."""
    B, N = orders.shape
    first = torch.arange(N, device=orders.device)[None] < count[:, None]  # (B, N) in order space
    return torch.zeros_like(first).scatter(1, orders, first)


def revealed_positions(reveal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The revealed positions of reveal (B, N) bool, each row's in increasing order (the order of
    reveal.nonzero()): first (B, K) with K the most any row reveals (rows with fewer repeat
    position 0) and valid (B, K), whether the k-th exists. K is read back from the device."""
    counts = reveal.sum(1)
    K = int(counts.max())
    first = torch.argsort((~reveal).to(torch.uint8), dim=1, stable=True)[:, :K]  # (B, K)
    valid = torch.arange(K, device=reveal.device) < counts[:, None]
    return first, valid


class MARLevel(Level):
    def __init__(self, config: LevelConfig):
        super().__init__(config)
        self.channels = config.channels
        self.num_conds = config.num_conds
        self.num_prefix = config.num_conds + int(config.guiding_pixel)
        self.neighbours = NEIGHBOURS[: config.conds_down]  # the conditions the next level reads
        self.normalize = Normalize(config.pixel_mean, config.pixel_std)
        width, p = config.width, config.patch_size
        self.patch_embed = nn.Linear(config.channels * p * p, width)
        self.cond_embed = nn.Linear(config.cond_width, width)
        if config.guiding_pixel:
            self.guide_embed = nn.Linear(config.channels, width)
            self.guide_head = PixelHead(config.guide_head)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + config.seq_len, width))
        self.embed_norm = nn.LayerNorm(width, eps=1e-6)
        self.blocks = nn.ModuleList([ViTBlock(width, config.heads, config.attn_dropout, config.proj_dropout)
                                     for _ in range(config.blocks)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    # ---- the transformer ---------------------------------------------------------

    def hidden(self, patches, mask, conds, guide=None, wanted=None):
        """patches (R, N, C*p*p) raw, mask (R, N) bool, conds list of (R, Dc), guide (R, C).

        Returns the hidden states of the patch tokens (R, N, D), or with `wanted` (R, K)
        patch positions only those (R, K, D).
        """
        x = self.patch_embed(self.normalize(patches))  # (R, N, D)
        x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        conds = complete_conds(conds, self.num_conds)
        prefix = [self.cond_embed(torch.stack(conds[::-1], dim=1))]  # (R, n, D): cond_{n-1} ... cond_0
        if self.config.guiding_pixel:
            prefix.insert(0, self.guide_embed(guide)[:, None])  # (R, 1, D)
        x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        x = self.embed_norm(x)
        for block in self.blocks[:-1]:
            x = block(x)
        # Nobody reads the last block's outputs at the prefix tokens (nor, when sampling, away from
        # the revealed patches and their neighbours): it computes them only where they are read.
        queries = slice(self.num_prefix, None) if wanted is None else wanted + self.num_prefix
        x = self.blocks[-1](x, queries=queries) if len(self.blocks) else select_tokens(x, queries)
        return self.norm(x)

    def neighbour_conds(self, h, rows, index):
        """The conditions of patches (rows[k], index[k]) of h (R, N, D) the next level reads -> list of (K, D)."""
        R, N, D = h.shape
        g = self.config.grid
        padded = F.pad(h.view(R, g, g, D), (0, 0, 1, 1, 1, 1))  # (R, g+2, g+2, D), zeros beyond the border
        r, c = index // g + 1, index % g + 1
        return [padded[rows, r + dr, c + dc] for dr, dc in self.neighbours]

    def revealed_conds(self, patches, mask, conds, guide, first, valid=None):
        """The conditions of the revealed patches the next level reads: list of (M, D), one row per valid (r, k)
        in row-major order.

        first (R, K): each row's revealed positions in increasing order; valid (R, K): which of them
        are real (None: all; see revealed_positions). Equals neighbour_conds(hidden(...), rows, index)
        for those (row, position) pairs, with the last block computed only at the revealed patches
        and the neighbours whose conditions are read.
        """
        wanted, inside = self.neighbour_positions(first)
        h = self.hidden(patches, mask, conds, guide, wanted=wanted)  # (R, nK, D)
        h = h.view(h.shape[0], -1, len(self.neighbours), h.shape[-1]) * inside[..., None]  # zeros beyond the border
        h = h.flatten(0, 1) if valid is None else h[valid]  # (M, n, D)
        return list(h.unbind(1))

    def neighbour_positions(self, first):
        """Where the conditions of the patches at positions first (B, K) come from.

        Returns wanted (B, nK) for the n conditions the next level reads: for each, its own position
        and (n = 5) those above, right, below and left of it (position 0 beyond the border);
        inside (B, K, n): whether that neighbour exists.
        """
        B, K = first.shape
        g, n = self.config.grid, len(self.neighbours)
        r, c = first // g, first % g
        offsets = torch.tensor(self.neighbours, device=first.device)  # (n, 2)
        nr, nc = r[..., None] + offsets[:, 0], c[..., None] + offsets[:, 1]  # (B, K, n)
        inside = (nr >= 0) & (nr < g) & (nc >= 0) & (nc < g)
        wanted = torch.where(inside, nr * g + nc, 0)
        return wanted.view(B, K * n), inside

    def guide_values(self, x):
        """The patch's mean colour: raw mean (B, C) and its normalised value (what the token sees)."""
        raw_mean = x.mean(dim=(2, 3))
        return raw_mean, self.normalize(raw_mean)

    # ---- training and likelihood ---------------------------------------------------

    def forward_train(self, x, conds, mask_spec="train", weighted=True, guide_target=None) -> LevelOutput:
        """x (B, C, S, S) raw; mask_spec: "train", "uniform", "eval", "all" or a bool tensor (B, N), True = masked.

        guide_target (tests): the guiding pixel's integer targets (B, C), instead of drawing them.
        """
        B = x.shape[0]
        patches = patchify(x, self.config.patch_size)  # (B, N, C*p*p)
        mask = self._mask(mask_spec, B, x.device)
        guide, guide_nll = None, None  # guiding-pixel loss (B,)
        if self.config.guiding_pixel:
            raw_mean, guide = self.guide_values(x)
            # Official: a 0.01-std jitter before rounding breaks exact .5 ties at random instead of to even.
            if guide_target is None:
                target = (raw_mean + 1e-2 * torch.randn_like(raw_mean)).round().long().clamp(0, 255)
            else:
                target = guide_target.to(x.device, torch.long)
            guide_nll = self.guide_head.nll(conds[0], target, weighted)
        h = self.hidden(patches, mask, conds, guide)
        rows, index = mask.nonzero(as_tuple=True)  # only masked patches go down
        p = self.config.patch_size
        return LevelOutput(
            x=patches[rows, index].view(-1, self.channels, p, p),
            conds=self.neighbour_conds(h, rows, index),
            parent=rows,
            nll=guide_nll,
        )

    def _mask(self, spec, batch, device):
        n = self.config.seq_len
        if isinstance(spec, torch.Tensor):
            return spec.to(device=device, dtype=torch.bool)
        if spec == "train":
            return training_mask(batch, n, device)
        if spec == "uniform":
            return uniform_training_mask(batch, n, device)
        if spec == "eval":
            return likelihood_mask(batch, n, device)
        if spec == "all":
            return torch.ones(batch, n, dtype=torch.bool, device=device)
        raise ValueError(f"unknown mask spec {spec!r}")

    # ---- sampling ---------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, conds, guidance, ctx: SampleContext, known: Known | None, next_level: NextLevel):
        """Generate B squares; conds (R, Dc) with R = 2B when guided, guidance (B,) handed down.

        Fully known patches start revealed and are never generated; the others are revealed
        in random order, ctx.steps steps on a cosine schedule, by the next level, which gets
        the known pixels of partially known patches. When coding (ctx.coder) every patch is
        generated and the guiding pixel is the known patch's rounded mean. Returns raw values
        (B, C, S, S) and the log-probability of each drawn value (B, C, S, S), 0 where known; the
        guiding pixel's log-probability is shared equally by the values of its square.
        """
        B, N, p, C = guidance.shape[0], self.config.seq_len, self.config.patch_size, self.channels
        device, dtype = conds[0].device, self.pos_embed.dtype  # fp32, or float64 in the codec's coding pass
        square_logp = torch.zeros(B, device=device, dtype=dtype)  # the guiding pixel's, spread over the square

        guide = None
        if self.config.guiding_pixel:
            given = None
            if ctx.coder is not None and known is not None:  # the encoder codes the square's rounded mean
                given = known.values.mean(dim=(2, 3)).round().clamp(0, 255)
            guide_raw, guide_logp = self.guide_head.draw_channels(  # the mean colour first
                conds[0], guidance, ctx, given, None if given is None else torch.ones_like(given, dtype=torch.bool))
            square_logp += guide_logp.sum(1)
            guide = ctx.doubled(self.normalize(guide_raw.to(dtype)))

        patches = torch.zeros(B, N, C * p * p, device=device, dtype=dtype)
        logp = torch.zeros(B, N, C * p * p, device=device, dtype=dtype)  # per value, laid out like patches
        known_full = None  # (B, N) bool: patches given whole; None when there are none
        known_values = known_mask = None
        if known is not None:
            known_values = patchify(known.values, p)
            known_mask = patchify(known.mask, p)
            # Coding visits every value, and the encoder computes exactly what the decoder does: the
            # known values are only the coder's targets, never fed ahead of their turn.
            if ctx.coder is None:
                patches = torch.where(known_mask, known_values.to(dtype), patches)
                known_full = known_mask.all(-1)
        mask = torch.ones(B, N, dtype=torch.bool, device=device) if known_full is None else ~known_full  # to generate
        total = mask.sum(1)  # (B,)
        if ctx.coder is not None and ctx.coder.fixed_order:  # the same order on every machine, for every row
            orders = coding_order(N, device).expand(B, N)
        else:
            orders = random_orders(B, N, device, ctx.generator, last=known_full)  # unknown tokens first
        steps = min(N, ctx.steps)
        schedule, on_step = ctx.schedule, ctx.level_on_step
        revealed_conds = self.revealed_conds
        if ctx.compiled and ctx.coder is None and known is None:  # (the codec's passes stay as they are everywhere)
            revealed_conds = compiled(self.revealed_conds)  # fuses the norms, GELU and residual adds around the matmuls
        left = N  # with nothing given whole: tokens still masked in every row, known on the host
        for step in range(steps):
            if known_full is None:
                # Every row reveals the same number of tokens, the last `left - keep` still masked in
                # its order: no count is read back from the device.
                keep = min(max(1, min(left - 1, cosine_masked_after(step, steps, N))), left)
                kept = 0 if step == steps - 1 else keep
                first = orders[:, kept:left].sort(dim=1).values  # (B, K) positions revealed, increasing
                valid = None
                reveal = torch.zeros_like(mask).scatter_(1, first, True)
                rows = torch.arange(B, device=device)[:, None].expand_as(first).flatten()
                index = first.flatten()
                keep = torch.full_like(total, keep)
                left = kept
            else:  # inpainting: rows differ; finding what each reveals reads the device
                masked = mask.sum(1)
                # Official clamping: keep at least one masked, reveal at least one (rows already done keep 0).
                keep = torch.maximum(torch.ones_like(masked), torch.minimum(
                    masked - 1, cosine_masked_after(step, steps, total))).minimum(masked)
                reveal = mask if step == steps - 1 else mask & ~mask_first_in_order(orders, keep)
                first, valid = revealed_positions(reveal)
                rows, index = reveal.nonzero(as_tuple=True)
            if rows.numel():
                if schedule is not None:  # level 0: guidance follows the fraction generated
                    guidance = schedule(ctx.guidance_scale, (total - keep).float() / total.clamp(min=1))
                next_conds = revealed_conds(ctx.doubled(patches), ctx.doubled(mask), conds, guide,
                                            ctx.doubled(first), None if valid is None else ctx.doubled(valid))
                next_known = None
                if known_values is not None and known_mask is not None:
                    next_known = Known(known_values[rows, index].view(-1, C, p, p),
                                       known_mask[rows, index].view(-1, C, p, p))
                values, child_logp = next_level(next_conds, guidance[rows], next_known)
                patches[rows, index] = values.reshape(rows.numel(), -1).to(patches.dtype)
                logp[rows, index] = child_logp.reshape(rows.numel(), -1)
            mask = mask & ~reveal
            if on_step is not None:
                on_step(unpatchify(patches, p, C), unpatchify((~mask)[..., None].expand(-1, -1, C * p * p), p, C))
        logp = unpatchify(logp, p, C) + (square_logp / (N * C * p * p))[:, None, None, None]
        return unpatchify(patches, p, C), logp

