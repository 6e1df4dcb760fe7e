"""CoBa parts 2 and 3: code uniformity penalty and auxiliary-loss-free load balancing (S2GR.md Stage A 5-6).

Load balancing (DeepSeek-V3 style, no loss term). Each level l keeps a bias b_l [C_l] that enters ONLY the
choice of the nearest code:

    code = argmin_c ( ‖r - e_c‖² + s_l · b_l[c] )        (the true distance is used for every loss)
    after each step:  b_l[c] += γ · sign(usage_c - mean usage),  clipped to [-b_max, b_max]

so an over-used code gets a larger bias (harder to pick) and an under-used one a smaller / negative bias
(easier to pick). s_l *(ours)* makes the bias scale-free: an exponential moving average of the batch mean
nearest squared distance at level l, so b_max = 0.5 means "up to half a typical quantisation distance",
whatever the latent scale of that (ever smaller) residual level.

Uniformity *(exact form ours)*: for the codes e_1..e_C of one level,
    penalty = weight · mean_{i<j} relu(δ_l - ‖e_i - e_j‖)²,
with the margin δ_l = uniformity_margin · (mean pairwise code distance of the level, detached) so one margin
works for every residual level. Shapes: C codes, D latent dims, B batch.
"""
from __future__ import annotations

import torch


class BalanceBias:
    """Selection biases of every level plus their distance scales; a plain state holder (no autograd)."""

    def __init__(self, sizes: list[int], gamma: float, max_bias: float, device: torch.device | str = "cpu",
                 momentum: float = 0.99):
        self.bias = [torch.zeros(c, device=device) for c in sizes]
        self.scale = [torch.zeros((), device=device) for _ in sizes]
        self.gamma, self.max_bias, self.momentum = float(gamma), float(max_bias), momentum
        self._seen = [False] * len(sizes)

    def effective(self, level: int) -> torch.Tensor:
        """The term added to the [B, C] distances when choosing a code at ``level`` (s_l · b_l)."""
        return self.scale[level] * self.bias[level]

    def observe_scale(self, level: int, nearest_sq_dist: torch.Tensor) -> None:
        """Track s_l from the (unbiased) nearest squared distances of a training batch."""
        m = nearest_sq_dist.detach().mean()
        if not self._seen[level]:
            self.scale[level] = m.clone()
            self._seen[level] = True
        else:
            self.scale[level] = self.momentum * self.scale[level] + (1.0 - self.momentum) * m

    @torch.no_grad()
    def update(self, level: int, codes: torch.Tensor) -> None:
        """b += γ·sign(usage - mean usage) from one batch's chosen codes [B]; clip to ±b_max."""
        c = self.bias[level].numel()
        usage = torch.bincount(codes, minlength=c).float()
        step = self.gamma * torch.sign(usage - usage.mean())
        self.bias[level] = (self.bias[level] + step).clamp_(-self.max_bias, self.max_bias)

    def state(self) -> dict[str, list]:
        return {"bias": [b.cpu() for b in self.bias], "scale": [s.cpu() for s in self.scale]}


def uniformity_penalty(codebook: torch.Tensor, margin: float) -> torch.Tensor:
    """mean over pairs i<j of relu(δ - ‖e_i - e_j‖)² with δ = margin · mean pairwise distance (detached)."""
    c = codebook.shape[0]
    if c < 2 or margin <= 0:
        return codebook.sum() * 0.0
    sq = (codebook * codebook).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * codebook @ codebook.T).clamp_min(0.0)
    upper = torch.ones(c, c, dtype=torch.bool, device=codebook.device).triu(1)
    dist = (d2[upper] + 1e-12).sqrt()  # [C(C-1)/2], O(C²) memory without a [pairs, D] difference tensor
    delta = margin * dist.detach().mean()
    return torch.relu(delta - dist).pow(2).mean()
