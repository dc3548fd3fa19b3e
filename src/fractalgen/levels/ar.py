"""The AR level (FractalAR's generator): raster order, causal, LLaMA-style blocks with 2-D rotary embedding.

Sequence = [condition token, patch_0, ..., patch_{N-2}]; the output at position i has seen
the condition and patches < i, and is the condition for patch i. Sampling feeds one token
per step through a key/value cache.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import LevelConfig
from ..nn import LlamaBlock, LlamaStep, rotary_table_2d, rotary_turns
from ..sampling import Known, SampleContext, compiled
from .base import Level, LevelOutput, NextLevel, Normalize, patchify, unpatchify


class ARLevel(Level):
    def __init__(self, config: LevelConfig):
        super().__init__(config)
        self.channels = config.channels
        self.normalize = Normalize(config.pixel_mean, config.pixel_std)
        width, p = config.width, config.patch_size
        self.patch_embed = nn.Linear(config.channels * p * p, width)
        self.cond_embed = nn.Linear(config.cond_width, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.seq_len + 1, width))
        self.embed_norm = nn.LayerNorm(width, eps=1e-6)
        # The MAR dropout options do not apply: AR blocks have their own (the official values by default).
        self.blocks = nn.ModuleList([LlamaBlock(width, config.heads, config.ar_residual_dropout,
                                                config.ar_attn_dropout) for _ in range(config.blocks)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def rotary(self, device, dtype=torch.float32):
        return rotary_table_2d(self.config.grid, self.config.width // self.config.heads, num_prefix=1, device=device,
                               dtype=dtype)

    def hidden(self, patches, cond):
        """patches (B, N, C*p*p) raw, cond (B, Dc) -> (B, N, D): row i conditions patch i."""
        N = self.config.seq_len
        # The last patch's token is never needed: causal attention keeps it from every output we use.
        x = torch.cat([self.cond_embed(cond)[:, None], self.patch_embed(self.normalize(patches[:, :-1]))], dim=1)
        x = self.embed_norm(x + self.pos_embed[:, :N])
        rotary = self.rotary(x.device, self.pos_embed.dtype)[:N]
        for block in self.blocks:
            x = block(x, rotary)
        return self.norm(x)

    def forward_train(self, x, conds, mask_spec=None, weighted=True, guide_target=None) -> LevelOutput:
        """Every patch goes down (no masking, no guiding pixel in AR levels): mask_spec and guide_target are ignored."""
        B, p = x.shape[0], self.config.patch_size
        patches = patchify(x, p)  # (B, N, C*p*p)
        h = self.hidden(patches, conds[0])
        return LevelOutput(
            x=patches.reshape(-1, self.channels, p, p),
            conds=[h.reshape(-1, h.shape[-1])],
            parent=torch.arange(B, device=x.device).repeat_interleave(self.config.seq_len),
        )

    @torch.no_grad()
    def sample(self, conds, guidance, ctx: SampleContext, known: Known | None, next_level: NextLevel):
        """Generate B squares patch by patch in raster order with a KV cache (ctx.steps is ignored: N steps).

        conds (R, Dc) with R = 2B when guided. Fully known patches are fed, not generated;
        partially known ones hand their known pixels to the next level (when coding, ctx.coder, every
        patch goes down). An AR level cannot look ahead: a patch is generated from the condition and
        the patches before it in raster order. Returns raw values (B, C, S, S) and the log-probability
        of each drawn value (B, C, S, S), 0 where known.
        """
        B, N, p, C = guidance.shape[0], self.config.seq_len, self.config.patch_size, self.channels
        device = conds[0].device
        dtype = self.pos_embed.dtype  # fp32, or float64 in the codec's coding pass
        schedule, on_step = ctx.schedule, ctx.level_on_step
        patches = torch.zeros(B, N, C * p * p, device=device, dtype=dtype)
        logp = torch.zeros(B, N, C * p * p, device=device, dtype=dtype)  # per value, laid out like patches
        known_full = None  # (B, N) bool: patches given whole; None when there are none
        if known is not None:
            known_values, known_mask = patchify(known.values, p), patchify(known.mask, p)
            # Coding visits every value, and the encoder computes exactly what the decoder does: the
            # known values are only the coder's targets, never fed ahead of their turn.
            if ctx.coder is None:
                patches = torch.where(known_mask, known_values.to(dtype), patches)
                known_full = known_mask.all(-1)
        turns = rotary_turns(self.rotary(device, dtype))
        steps = ctx.decode_steps(self.blocks, conds[0].shape[0], N, LlamaStep)
        position_step, positions = self.position_step, list(range(N))
        if ctx.compiled and ctx.coder is None:  # one graph for every position: t as a tensor (nn/decode.py)
            position_step = compiled(self.position_step, static=True)
            positions = list(torch.arange(N, device=device)[:, None])
            turns = torch.view_as_real(turns)  # inductor has no complex kernels
        token = self.cond_embed(conds[0])  # (R, D): position 0
        for t in range(N):
            h = position_step(token, positions[t], steps, turns)  # (R, D): the condition for patch t
            if schedule is not None:  # level 0: guidance ramps with the raster position
                guidance = schedule(ctx.guidance_scale, torch.full((B,), (t + 1) / N, device=device))
            if known is None:  # every row generates patch t
                values, child_logp = next_level([h], guidance, None)
                patches[:, t] = values.reshape(B, -1)
                logp[:, t] = child_logp.reshape(B, -1)
            else:
                self._sample_known(t, h, guidance, ctx, next_level, known_values, known_mask, known_full,
                                   patches, logp)
            if t + 1 < N:
                token = self.patch_embed(self.normalize(ctx.doubled(patches[:, t])))
            if on_step is not None:
                filled = torch.zeros(B, N, C * p * p, dtype=torch.bool, device=device)
                filled[:, : t + 1] = True
                on_step(unpatchify(patches, p, C), unpatchify(filled, p, C))
        return unpatchify(patches, p, C), unpatchify(logp, p, C)

    def position_step(self, token: torch.Tensor, t: int | torch.Tensor, steps: list[LlamaStep],
                      turns: torch.Tensor) -> torch.Tensor:
        """The token (R, D) at raster position t -> (R, D), the condition for patch t; every step's cache keeps
        its keys and values. t: an int, or a tensor (1,) for a compiled step (one graph for every position,
        see nn/decode.py)."""
        x = self.embed_norm(token + self.pos_embed[0, t])
        for step in steps:
            x = step(x, t, turns[t])
        return self.norm(x)

    def _sample_known(self, t: int, h, guidance, ctx: SampleContext, next_level: NextLevel, known_values, known_mask,
                      known_full, patches, logp):
        """Patch t of every row not given it whole: its known pixels go down with it (all of them when
        coding, where known_full is None). Finding the rows reads the device (a GPU waits), as
        inpainting may."""
        B, C, p = guidance.shape[0], self.channels, self.config.patch_size
        if known_full is None:
            rows = torch.arange(B, device=h.device)
        else:
            rows = (~known_full[:, t]).nonzero(as_tuple=True)[0]
            if not rows.numel():
                return
        next_known = Known(known_values[rows, t].view(-1, C, p, p), known_mask[rows, t].view(-1, C, p, p))
        values, child_logp = next_level([h[ctx.doubled_rows(rows, B)]], guidance[rows], next_known)
        patches[rows, t] = values.reshape(rows.numel(), -1).to(patches.dtype)
        logp[rows, t] = child_logp.reshape(rows.numel(), -1)
