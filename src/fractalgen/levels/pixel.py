"""The pixel head, the last level: a causal transformer over the C channels of one pixel.

As the last level it answers a level's two calls (`forward_train`, `sample`) for squares of one pixel.

Sequence = [projection of the condition, embedding(channel 0), ..., embedding(channel C-2)];
position c predicts channel c as a 256-way categorical whose output weights are the
channel's own embedding table (tied) plus a per-channel bias. The same module, with fixed
width 128, is the guiding-pixel head of MAR levels (it predicts a patch's mean colour).
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn

from ..config import PixelHeadConfig
from ..nn import ViTBlock, ViTStep, fp32_island, fp32_or_wider, tied_cross_entropy
from ..sampling import Known, SampleContext, ValueCoder, apply_temperature, compiled, draw, guide
from .base import LevelOutput, NextLevel

NUM_VALUES = 256


class PixelHead(nn.Module):
    def __init__(self, config: PixelHeadConfig):
        super().__init__()
        self.config = config
        self.channels = config.channels
        self.red_weight = config.red_weight
        width = config.width
        self.cond_proj = nn.Linear(config.cond_width, width)
        self.codebooks = nn.ModuleList([nn.Embedding(NUM_VALUES, width) for _ in range(config.channels)])
        self.embed_norm = nn.LayerNorm(width, eps=1e-6)
        self.blocks = nn.ModuleList([ViTBlock(width, config.heads) for _ in range(config.blocks)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.logit_bias = nn.ParameterList([nn.Parameter(torch.zeros(1, NUM_VALUES))
                                            for _ in range(config.channels)])

    def _tied_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every channel's output weights: tables (C, 256, W) and biases (C, 1, 256), in fp32 or wider
        (the 256-way logits against them are an fp32 island, as the checkpoints expect)."""
        table = fp32_or_wider(torch.stack([cast(nn.Embedding, cb).weight for cb in self.codebooks]))
        bias = fp32_or_wider(torch.stack(list(self.logit_bias)))
        return table, bias

    def _next_channel_logits(self, h: torch.Tensor, c: int) -> torch.Tensor:
        """h (R, W) predicting channel c -> fp32 logits (R, 256) (the fp32 island above, for one channel)."""
        # One addmm: slicing the ModuleLists and stacking every table per draw cost more than the matmul.
        with fp32_island(h.device.type):
            return torch.addmm(fp32_or_wider(self.logit_bias[c]), fp32_or_wider(h),
                               fp32_or_wider(cast(nn.Embedding, self.codebooks[c]).weight).t())

    def _hidden(self, cond: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The states that predict each channel, channel-major: (C, M, W) in fp32 or wider."""
        tokens = [self.cond_proj(cond)[:, None]]
        # The last channel's embedding is never needed: causal attention keeps it from every output.
        tokens += [self.codebooks[c](values[:, c])[:, None] for c in range(self.channels - 1)]
        x = self.embed_norm(torch.cat(tokens, dim=1))  # (M, C, W)
        for block in self.blocks:
            x = block(x, causal=True)
        return fp32_or_wider(self.norm(x)).transpose(0, 1)

    def logits(self, cond: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """cond (M, Dc), values (M, C) int -> logits (M, C, 256) of every channel given the previous ones."""
        table, bias = self._tied_tables()
        h = self._hidden(cond, values)
        with fp32_island(h.device.type):
            return torch.baddbmm(bias, h, table.transpose(1, 2)).transpose(0, 1)

    def nll(self, cond: torch.Tensor, values: torch.Tensor, weighted: bool) -> torch.Tensor:
        """Per-row loss (M,) in nats. Training weights channel 0 by `red_weight`; evaluation is the plain mean."""
        table, bias = self._tied_tables()
        ce = tied_cross_entropy(self._hidden(cond, values), table, bias, values.t())  # (C, M)
        if not weighted:
            return ce.mean(0)
        weights = torch.ones(self.channels, 1, device=ce.device)
        weights[0] = self.red_weight
        return (ce * weights).sum(0) / weights.sum()

    # ---- as the last level: squares of one pixel ------------------------------------------

    def forward_train(self, x: torch.Tensor, conds: list[torch.Tensor], mask_spec="train", weighted: bool = True,
                      guide_target: torch.Tensor | None = None) -> LevelOutput:
        """x (M, C, 1, 1) raw pixel values, conds list of (M, cond_width) -> their loss per pixel (`nll`, (M,));
        nothing goes further down (x and conds pass through). mask_spec and guide_target have no use here."""
        M = x.shape[0]
        return LevelOutput(x=x, conds=conds, parent=torch.arange(M, device=x.device),
                           nll=self.nll(conds[0], x.flatten(1).round().long(), weighted))

    def sample(self, conds: list[torch.Tensor], guidance: torch.Tensor, ctx: SampleContext, known: Known | None,
               next_level: NextLevel | None = None):
        """Generate B pixels -> raw values (B, C, 1, 1) and the log-probability of each value drawn
        (B, C, 1, 1). As a level's `sample`, with nothing below (next_level has no use here)."""
        known_values = known_mask = None
        if known is not None:
            known_values, known_mask = known.values.flatten(1), known.mask.flatten(1)  # (B, C)
        values, logp = self.draw_channels(conds[0], guidance, ctx, known_values, known_mask)
        return values.float().view(-1, self.channels, 1, 1), logp.view(-1, self.channels, 1, 1)

    # ---- one pixel's channels (also the guiding pixel of a MAR level) --------------------------

    @torch.no_grad()
    def draw_channels(self, cond: torch.Tensor, guidance: torch.Tensor, ctx: SampleContext,
                      known_values: torch.Tensor | None = None, known_mask: torch.Tensor | None = None):
        """Draw channel by channel with a KV cache.

        cond (R, Dc) with R = 2B when guided (conditional rows first), guidance (B,) the scale per row;
        known_values/known_mask (B, C): given channels are copied instead of drawn.
        Returns values (B, C) long and the log-probability of each drawn channel (B, C) (0 where given).
        """
        B, R = guidance.shape[0], cond.shape[0]
        # Every channel's uniform drawn at once, before any is used: one call to the generator per pixel.
        uniforms = None if ctx.coder is not None else torch.rand(self.channels, B, device=cond.device,
                                                                  generator=ctx.generator)
        if ctx.compiled and uniforms is not None and known_values is None:
            # One graph per pixel: its steps are built inside it, where the compiler lays them out.
            # (contiguous: a graph is kept per layout of its inputs)
            return compiled(self.channels_step)(cond.contiguous(), guidance, uniforms, ctx.temperature, ctx.guided,
                                                ctx.filter_threshold)
        steps = ctx.decode_steps(self.blocks, R, self.channels, ViTStep)
        return self.channels_step(cond, guidance, uniforms, ctx.temperature, ctx.guided, ctx.filter_threshold,
                                  steps, ctx.coder, known_values, known_mask)

    def channels_step(self, cond: torch.Tensor, guidance: torch.Tensor, uniforms: torch.Tensor | None,
                      temperature: float, guided: bool, filter_threshold: float, steps: list[ViTStep] | None = None,
                      coder: ValueCoder | None = None, known_values: torch.Tensor | None = None,
                      known_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`draw_channels` given its uniforms (C, B) (None when a coder chooses the values) and its decode
        steps (None: built here). Without a coder or known values it is a pure function of its tensors,
        the unit `compiled` turns into one graph (and on CUDA, one captured graph)."""
        R, C = cond.shape[0], self.channels
        if steps is None:
            steps = [ViTStep(cast(ViTBlock, block), R, C) for block in self.blocks]
        ids_list, logp_list = [], []
        x = self.cond_proj(cond)  # (R, W)
        for c in range(C):
            h = self.embed_norm.forward(x)
            for step in steps:
                h = step(h, c)
            logits = self._next_channel_logits(self.norm.forward(h), c)  # (R, 256)
            if temperature != 1.0:  # (a product with 1 would change nothing)
                logits = apply_temperature(logits, temperature)
            if guided:
                logits = guide(logits, guidance, filter_threshold)  # (B, 256)
            if coder is not None:  # lossless coding: the image's value (encoder) or the stream's (decoder)
                ids, lp = coder.code(logits, None if known_values is None else known_values[:, c].long())
            else:
                assert uniforms is not None
                ids, lp = draw(logits, uniforms[c])
                if known_values is not None and known_mask is not None:
                    given = known_mask[:, c]
                    ids = torch.where(given, known_values[:, c].long(), ids)
                    lp = lp.masked_fill(given, 0.0)
            ids_list.append(ids)
            logp_list.append(lp)
            if c + 1 < C:
                x = self.codebooks[c](torch.cat([ids, ids]) if guided else ids)
        return torch.stack(ids_list, 1), torch.stack(logp_list, 1)
