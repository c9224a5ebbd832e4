"""Cross-attention maps, captured through diffusers' attention-processor API (diffusers is not edited).

Every cross-attention layer (``attn2``) of the UNet gets a processor that computes attention as
diffusers' plain ``AttnProcessor`` does and also keeps the attention probabilities: for each query
position, a distribution over prompt tokens. ``token_maps`` averages them over heads, layers and
denoising steps, so at every position the tokens' weights still sum to 1.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


class RecordingAttnProcessor:
    """Plain scaled-dot-product attention that also records the (conditional) attention probabilities."""

    def __init__(self, recorder: AttentionRecorder):
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch, length, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # [batch * heads, queries, tokens]
        self.recorder.add(probs.view(batch, attn.heads, length, -1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


class AttentionRecorder:
    """Installs recording processors on a UNet's cross-attention layers until ``close()``."""

    def __init__(self, unet, batch: int):
        self.unet = unet
        self.batch = batch  # the first ``batch`` rows are the conditional ones (guidance doubles them)
        self.saved = dict(unet.attn_processors)
        self.maps: list[torch.Tensor] = []
        processors = {name: (RecordingAttnProcessor(self) if name.endswith("attn2.processor") else proc)
                      for name, proc in self.saved.items()}
        unet.set_attn_processor(processors)

    def add(self, probs):
        heads_mean = probs[: self.batch].float().mean(1)  # [batch, queries, tokens]
        side = math.isqrt(heads_mean.shape[1])
        grid = heads_mean.transpose(1, 2).reshape(self.batch, -1, side, side)
        self.maps.append(grid)

    def close(self):
        self.unet.set_attn_processor(self.saved)

    def token_maps(self, tokens: int, size: int, padded: int | None = None) -> torch.Tensor:
        """[tokens, size, size] maps for the first sample, aggregated over layers and steps."""
        if not self.maps:
            raise RuntimeError("no cross-attention was recorded")
        target = max(m.shape[-1] for m in self.maps)
        total = sum(F.interpolate(m, size=(target, target), mode="bilinear", align_corners=False) for m in self.maps)
        total = total / len(self.maps)
        padded = padded or 4 * target  # the latent is a quarter of the autoencoder's padded input
        full = F.interpolate(total, size=(padded, padded), mode="bilinear", align_corners=False)
        crop = (padded - size) // 2
        full = full[..., crop : crop + size, crop : crop + size]
        return full[0, :tokens]
