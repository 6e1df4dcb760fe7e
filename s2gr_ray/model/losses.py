"""Loss terms of S2GR (S2GR.md "Losses"). Pure functions; weights and on/off live in the model.

Shape legend: B batch, C codes of a level, K_c coarse clusters, D model dim, D_lat codebook latent dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rec_loss(logits: list[Tensor], target: Tensor) -> Tensor:
    """L_Rec: cross-entropy of every ground-truth code, summed over levels (= NLL of the SID), mean over batch.

    logits[l] [B, C_l]; target [B, L_total]. Summing matches the beam-search score (sum of log-probs).
    """
    return sum(F.cross_entropy(lg.float(), target[:, l]) for l, lg in enumerate(logits))  # type: ignore[return-value]


def align_loss(projected: Tensor, centres: Tensor, positive: Tensor, tau: float) -> Tensor:
    """L_Align(l): InfoNCE of a projected thinking vector against the K_c frozen coarse centres of level l.

    projected [B, D_lat]; centres [K_c, D_lat]; positive [B] cluster index of the ground-truth code.
    """
    sims = F.normalize(projected.float(), dim=-1) @ F.normalize(centres.float(), dim=-1).T  # [B, K_c]
    return F.cross_entropy(sims / tau, positive)


def infonce_loss(v_g: Tensor, item_repr: Tensor, target: Tensor, tau: float) -> Tensor:
    """L_InfoNCE: overall-interest vectors vs target-item representations, in-batch negatives.

    v_g [B, D] (projected), item_repr [B, D] (mean of the target's code embeddings), target [B, L_total]:
    other rows with the same target SID are not negatives (they are masked out).
    """
    sims = F.normalize(v_g.float(), dim=-1) @ F.normalize(item_repr.float(), dim=-1).T / tau  # [B, B]
    same = (target[:, None, :] == target[None, :, :]).all(-1)
    same.fill_diagonal_(False)
    sims = sims.masked_fill(same, float("-inf"))
    return F.cross_entropy(sims, torch.arange(sims.size(0), device=sims.device))


def reg_loss(t1: Tensor, v_g: Tensor) -> Tensor:
    """L_Reg = 1 - cos(t_1, stopgrad(v_g)): the first thinking vector starts from the user's overall interest."""
    return (1.0 - F.cosine_similarity(t1.float(), v_g.detach().float(), dim=-1)).mean()
