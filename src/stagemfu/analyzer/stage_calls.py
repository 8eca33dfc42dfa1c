"""Small modules that run exactly one stage, so a tracer (fvcore) sees that stage and nothing else.

This module imports torch; the counters import it only when they run.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from stagemfu.models.build import resolve


class ViewCall(nn.Module):
    """A batch of views through the vision tower and the projector: the vision stage without the layout.

    The whole model is the child ``model``, so sub-module names are ``model.`` + the stage paths of
    :func:`stagemfu.models.build.stage_modules`.
    """

    def __init__(self, model: nn.Module, tower_path: str, projector_path: str):
        super().__init__()
        self.model = model
        self.tower_path = tower_path
        self.projector_path = projector_path

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = resolve(self.model, self.tower_path)(pixel_values).last_hidden_state
        return resolve(self.model, self.projector_path)(features)


class LanguageModelCall(nn.Module):
    """One language-model call on input embeddings, then lm_head on the last ``logits`` positions.

    Extra positional tensors are a KV cache, key and value per layer, that the call attends over as
    generation's cache (so a traced decode step sees the real context length).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, logits: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.logits = logits

    def forward(self, inputs_embeds: torch.Tensor, *cache_tensors: torch.Tensor) -> torch.Tensor:
        cache = None
        if cache_tensors:
            cache = DynamicCache()
            for index in range(0, len(cache_tensors), 2):
                cache.update(cache_tensors[index], cache_tensors[index + 1], index // 2)
        out = self.backbone(inputs_embeds=inputs_embeds, cache=cache, use_cache=cache is not None)
        return self.head(out.last_hidden_state[:, -self.logits :])
