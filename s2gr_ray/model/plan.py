"""Decoder sequence layout: where BOS, thinking vectors and SID codes sit (S2GR.md "Stage B — the model").

stepwise (the paper), n_think = 1:  BOS, t1, s1, t2, s2, t3, s3, d          (d = dedup code, no thinking)
stepwise, n_think = 2:              BOS, t1a, t1b, s1, t2a, t2b, s2, ...
stepwise + think_on_dedup:          ..., s3, td, d
upfront, n_think = 1:               BOS, t1, t2, t3, s1, s2, s3, d          (reason first, then generate)
n_think = 0 (TIGER):                BOS, s1, s2, s3, d

Rule used everywhere: the decoder output at slot i predicts the code at slot i+1 when that slot is a code
(stepwise: the last thinking vector of level l predicts s_l; n_think = 0: the previous code, as TIGER).
A thinking slot's input is (final-normed output at slot i-1) + p[think_index] (a learned vector per level and
per think index). The last code is never fed as an input.

Shape legend: none (pure bookkeeping over slots).
"""
from __future__ import annotations

from typing import NamedTuple


class Slot(NamedTuple):
    kind: str  # "bos" | "think" | "code"
    level: int  # SID level (0-based) of the code, or the level a thinking vector belongs to; -1 for BOS
    j: int  # think index within its level (0..n_think-1); 0 for bos / code
    think_index: int  # row of the thinking parameter p (level-major); -1 for bos / code


def build_plan(num_levels: int, num_semantic_levels: int, n_think: int, placement: str,
               think_on_dedup: bool) -> list[Slot]:
    """The full decoder slot sequence (including the last code, which is predicted but never fed)."""
    if placement not in ("stepwise", "upfront"):
        raise ValueError(f"model.placement = {placement!r} must be stepwise or upfront (s2gr_ray/model/plan.py)")
    think_levels = num_semantic_levels + (1 if think_on_dedup and num_levels > num_semantic_levels else 0)
    slots = [Slot("bos", -1, 0, -1)]

    def thinks(level: int) -> list[Slot]:
        return [Slot("think", level, j, level * n_think + j) for j in range(n_think)]

    if placement == "upfront":
        for level in range(num_semantic_levels):
            slots += thinks(level)
        slots += [Slot("code", level, 0, -1) for level in range(num_levels)]
    else:
        for level in range(num_levels):
            if level < think_levels:
                slots += thinks(level)
            slots.append(Slot("code", level, 0, -1))
    return slots


def num_think_slots(plan: list[Slot]) -> int:
    return sum(s.kind == "think" for s in plan)


def training_chunks(plan: list[Slot]) -> list[list[int]]:
    """Group the fed slots (all but the last) into decoder steps for teacher forcing.

    A thinking slot needs the output of the slot right before it, so it starts a new step; every known input
    after it (BOS, teacher-forced codes) joins the current step, causal inside the step. Stepwise n_think = 1
    gives L_sem + 1 steps ([BOS], [t1, s1], [t2, s2], [t3, s3]; S2GR.md: "L+1 passes"); n_think = 0 gives one
    step: the TIGER full pass.
    """
    chunks: list[list[int]] = []
    for i, slot in enumerate(plan[:-1]):
        if slot.kind == "think" or not chunks:
            chunks.append([i])
        else:
            chunks[-1].append(i)
    return chunks
