"""Step 4 of EoS-FM: learnable specialist selection with optional top-k.

Every specialist has one weight, initialised to 1 and kept in a single
parameter tensor, that multiplies all of its normalised feature maps, so the
weights learn through the fusion like any other parameter. With ``top_k``,
only the ``k`` specialists with the largest weights are kept, and the others
are not run at all.

Schedule. While all weights are equal, a top-k cut would be decided by
tie-breaking, and a specialist that is never kept never gets a gradient. So
for the first ``warmup_steps`` training forward passes every eligible
specialist runs and every weight receives gradients; after that the ``k``
largest weights are kept. The kept set is recomputed at every forward pass
from the current weights, so a kept specialist whose weight falls below a
dropped one is replaced. Ties are broken by ensemble order (lower index
first). In eval mode the top-k cut always applies, warm-up or not, so that
validation measures the pruned model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


class SpecialistSelection(nn.Module):
    """Selection weights and the top-k schedule.

    Args:
        names: Specialist names, in ensemble order.
        eligible: For each specialist, whether it has at least one stream for
            the current input. Only eligible specialists are ever selected.
        top_k: Number of specialists to keep; ``None`` keeps all eligible ones.
        warmup_steps: Training forward passes during which every eligible
            specialist runs, before the top-k cut starts.

    Raises:
        ValueError: ``top_k`` is below 1, or ``warmup_steps`` is negative.
    """

    def __init__(
        self,
        names: Sequence[str],
        eligible: Sequence[bool],
        top_k: int | None = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k} is invalid; use a positive number or None for all specialists")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} is invalid; use 0 or more")
        self.names = list(names)
        self.top_k = top_k
        self.warmup_steps = int(warmup_steps)
        self.weight = nn.Parameter(torch.ones(len(self.names)))
        self.register_buffer("eligible", torch.tensor(list(eligible), dtype=torch.bool))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

        eligible_count = int(self.eligible.sum())
        if top_k is not None and top_k < eligible_count and warmup_steps == 0:
            logger.warning(
                "top_k=%d with warmup_steps=0: the kept specialists are fixed by tie-breaking at "
                "initialisation and the others never receive gradients. Set warmup_steps > 0 "
                "to let the selection weights move before pruning.",
                top_k,
            )
        if top_k is not None and top_k > eligible_count:
            logger.info("top_k=%d exceeds the %d specialists that can see this input; keeping all of them",
                        top_k, eligible_count)

    @property
    def in_warmup(self) -> bool:
        """Whether training passes still run every eligible specialist."""
        return int(self.steps_seen) < self.warmup_steps

    def selected(self, training: bool | None = None) -> list[int]:
        """Return the indices of the specialists to run, in ensemble order.

        Args:
            training: Select as in training mode (warm-up applies) or eval
                mode (the top-k cut always applies); the module's current
                mode when ``None``.
        """
        training = self.training if training is None else training
        candidates = torch.nonzero(self.eligible).flatten().tolist()
        k = self.top_k
        if k is None or k >= len(candidates) or (training and self.in_warmup):
            return candidates
        weights = self.weight.detach()[candidates].float().cpu()
        # A stable sort keeps ensemble order among equal weights.
        order = torch.sort(-weights, stable=True).indices[:k].tolist()
        return sorted(candidates[i] for i in order)

    def record_step(self) -> None:
        """Count one training forward pass and log when warm-up ends."""
        self.steps_seen += 1
        if self.top_k is not None and int(self.steps_seen) == self.warmup_steps:
            kept = [self.names[i] for i in self.selected(training=False)]
            logger.info("Selection warm-up finished after %d passes; keeping top-%d: %s",
                        self.warmup_steps, self.top_k, ", ".join(kept))

    def forward(self, specialist: int, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Multiply one stream's feature maps by its specialist's weight."""
        weight = self.weight[specialist].to(features[0].dtype)
        return [f * weight for f in features]

    def ranking(self) -> list[tuple[str, float, bool]]:
        """Return ``(name, weight, selected)`` for every specialist, largest weight first."""
        kept = set(self.selected(training=False))
        weights = self.weight.detach().float().cpu().tolist()
        order = sorted(range(len(weights)), key=lambda i: (-weights[i], i))
        return [(self.names[i], weights[i], i in kept) for i in order]
