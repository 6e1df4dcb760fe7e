"""Trie-constrained beam search over SIDs with deterministic thinking steps (S2GR.md "Inference").

The encoder runs once per user; the decoder runs slot by slot along ``model.plan`` with a KV cache. A thinking
slot feeds (previous output + p) back as the next input for every beam and does not widen the beam; a code
slot scores C_l continuations per beam, masks them through the trie and keeps the top K. The cache is
reordered to the surviving parents (self-attention K/V only; the encoder memory is shared per user, never
expanded). Scores are sums of log-softmax over the full vocabulary of each level (the same quantity as the
teacher-forced NLL), so with K >= the number of valid prefixes at every level the result is exact.

Shape legend: B users, K beams, C codes of the level, L SID levels, L_sem semantic levels, D d_model.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from s2gr_ray.evaluation.trie import PrefixTrie


class BeamResult(NamedTuple):
    items: Tensor  # [B, K] item ids 1..N, best first
    scores: Tensor  # [B, K] float32 sum of log-probs of the SID codes
    sids: Tensor  # [B, K, L]
    path_clusters: Tensor | None = None  # [B, K, L_sem, n_think] nearest coarse cluster of each thinking vector
    path_sims: Tensor | None = None  # [B, K, L_sem, n_think] its cosine similarity (via the align projection)


def _pick(x: Tensor, parent: Tensor) -> Tensor:
    """x [B, K_old, ...] -> rows ``parent`` [B, K_new] along dim 1."""
    idx = parent.view(*parent.shape, *([1] * (x.dim() - 2))).expand(*parent.shape, *x.shape[2:])
    return x.gather(1, idx)


@torch.no_grad()
def constrained_beam_search(model, history: Tensor, history_mask: Tensor, trie: PrefixTrie, beam_size: int,
                            return_paths: bool = False) -> BeamResult:
    """Top-K catalog items per user (K = min(beam_size, N)); see the module docstring."""
    if trie.num_levels != model.num_levels or any(t > m for t, m in zip(trie.level_sizes, model.level_sizes)):
        raise ValueError(f"constrained_beam_search: trie levels {list(trie.level_sizes)} do not fit the model's "
                         f"{list(model.level_sizes)}; build the trie from the tokenizer the model was trained on")
    if return_paths and (model.cfg.n_think == 0 or not model.use_align):
        raise ValueError("constrained_beam_search: return_paths needs thinking vectors and the align projection "
                         "(model.n_think > 0, model.w_align > 0)")
    was_training = model.training
    model.eval()
    try:
        return _search(model, history, history_mask, trie, beam_size, return_paths)
    finally:
        model.train(was_training)


def _search(model, history: Tensor, history_mask: Tensor, trie: PrefixTrie, beam_size: int,
            return_paths: bool) -> BeamResult:
    b, dev = history.size(0), history.device
    k_max = min(int(beam_size), trie.num_items)
    memory, mmask = model.encode(history, history_mask)
    cache = model.new_cache(memory, mmask)
    h = model.decode_step(model.bos_input(b), cache)[:, -1]  # [B*kc, D]
    kc = 1
    scores = torch.zeros(b, 1, device=dev)
    nodes = torch.zeros(b, dtype=torch.long, device=dev)  # trie node per beam row (root)
    sids = torch.zeros(b, 1, 0, dtype=torch.long, device=dev)
    thinks: list[tuple[int, int, Tensor]] = []  # (level, j, t [B, kc, D]) of semantic-level thinking vectors
    plan = model.plan
    for i in range(1, len(plan)):
        slot = plan[i]
        if slot.kind == "think":
            t = model.think_input(h, slot)
            if return_paths and slot.level < model.num_semantic_levels:
                thinks.append((slot.level, slot.j, t.view(b, kc, -1)))
            h = model.decode_step(t[:, None], cache)[:, -1]
            continue
        level, c = slot.level, model.level_sizes[slot.level]
        logp = F.log_softmax(model.code_logits(h, level).float(), dim=-1)  # [B*kc, C]
        valid, table = trie.children(level, nodes)
        if valid.size(1) < c:  # the trie's level is smaller than the model's head
            valid = F.pad(valid, (0, c - valid.size(1)), value=False)
            table = F.pad(table, (0, c - table.size(1)), value=-1)
        cand = (scores.view(-1, 1) + logp).masked_fill(~valid, float("-inf")).view(b, kc * c)
        k_new = min(k_max, kc * c)
        top = cand.topk(k_new, dim=1)
        parent, code = top.indices // c, top.indices % c  # [B, k_new]
        nodes = table.reshape(b, kc * c).gather(1, top.indices).view(-1)
        scores = top.values
        sids = torch.cat([_pick(sids, parent), code[..., None]], dim=2)
        thinks = [(lv, j, _pick(t, parent)) for lv, j, t in thinks]
        rows = (torch.arange(b, device=dev) * kc)[:, None] + parent  # parent beam rows in the cache
        kc = k_new
        if i < len(plan) - 1:
            cache.reorder(rows.view(-1), kc)
            h = model.decode_step(model.code_input(level, code.view(-1))[:, None], cache)[:, -1]
    items = nodes.view(b, kc)[:, :k_max]
    result = BeamResult(items, scores[:, :k_max], sids[:, :k_max])
    if not return_paths:
        return result
    n_think = model.cfg.n_think
    clusters = torch.zeros(b, k_max, model.num_semantic_levels, n_think, dtype=torch.long, device=dev)
    sims = torch.zeros(b, k_max, model.num_semantic_levels, n_think, device=dev)
    for lv, j, t in thinks:
        t = t[:, :k_max]
        cl, sim = model.think_clusters(t.reshape(-1, t.size(-1)), lv)
        clusters[:, :, lv, j], sims[:, :, lv, j] = cl.view(b, -1), sim.view(b, -1)
    return result._replace(path_clusters=clusters, path_sims=sims)
