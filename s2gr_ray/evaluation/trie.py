"""Prefix trie over the catalog's SIDs for constrained beam search (S2GR.md "Inference").

Per level l, a CSR over the prefix nodes of depth l (level 0: the root, node 0):
  indptr[l]  int64 [num_nodes_l + 1]   children of node n are edges indptr[n] .. indptr[n+1]-1
  codes[l]   int32 [num_edges_l]       child code (ascending within a node)
  child[l]   int32 [num_edges_l]       node id at depth l+1, or the item id (1..N) at the last level
  max_children[l]                      largest fan-out of the level
Edges per level <= N, so memory is O(N * L) whatever the codebook sizes (a dense [nodes, C] table would be
~65k x 256 at level 2 of a 1M catalog). A step looks up only the beams' nodes: ``children`` costs
O(rows x max_children_l) <= O(rows x C_l), independent of N. Building is a lexsort plus diffs (numpy).

Shape legend: N items, L levels, R looked-up rows (B x K beams), F = max_children of the level, C codes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


class PrefixTrie:
    def __init__(self, indptr: list[Tensor], codes: list[Tensor], child: list[Tensor], level_sizes: Sequence[int],
                 num_items: int) -> None:
        self.indptr, self.codes, self.child = indptr, codes, child
        self.level_sizes = tuple(int(c) for c in level_sizes)
        self.num_items = int(num_items)
        self.num_levels = len(self.level_sizes)
        self.max_children = [int((p[1:] - p[:-1]).max()) for p in indptr]
        self._copies: dict[str, PrefixTrie] = {}

    @classmethod
    def from_sids(cls, sids: np.ndarray | Tensor, level_sizes: Sequence[int] | None = None) -> "PrefixTrie":
        """sids [N, L] (row i = item id i+1). level_sizes defaults to max code + 1 per level."""
        s = sids.detach().cpu().numpy() if isinstance(sids, Tensor) else np.asarray(sids)
        if s.ndim != 2 or s.shape[0] == 0:
            raise ValueError(f"PrefixTrie.from_sids: sids must be a non-empty [N, L] code table, got {s.shape}")
        s = s.astype(np.int64, copy=False)
        n, num_levels = s.shape
        sizes = [int(c) for c in (level_sizes if level_sizes is not None else s.max(0) + 1)]
        if len(sizes) != num_levels or (s < 0).any() or (s >= np.asarray(sizes)).any():
            raise ValueError(f"PrefixTrie.from_sids: codes must lie in [0, level_sizes) = {sizes} per level")
        order = np.lexsort(s.T[::-1])  # lexicographic by level 0, then 1, ...
        ss = s[order]
        new = np.zeros(n, dtype=bool)
        new[0] = True
        parent = np.zeros(n, dtype=np.int64)  # node id (at depth l) of each sorted row's prefix s[:l]
        num_parents = 1
        indptr, codes, child = [], [], []
        for l in range(num_levels):
            new = new | np.concatenate([[True], ss[1:, l] != ss[:-1, l]])  # prefix s[:l+1] starts here
            node = np.cumsum(new) - 1  # node id at depth l+1 of each row
            rows = np.flatnonzero(new)
            edge_parent = parent[rows]
            counts = np.bincount(edge_parent, minlength=num_parents)
            indptr.append(torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)))
            codes.append(torch.from_numpy(ss[rows, l].astype(np.int32)))
            if l == num_levels - 1:
                if len(rows) != n:
                    dup = np.flatnonzero(~new)[0]
                    raise ValueError(f"PrefixTrie.from_sids: items {order[dup - 1] + 1} and {order[dup] + 1} share "
                                     f"the SID {ss[dup].tolist()}; SIDs must be unique (tokenizer.dedup=true)")
                child.append(torch.from_numpy((order[rows] + 1).astype(np.int32)))
            else:
                child.append(torch.from_numpy(node[rows].astype(np.int32)))
            parent, num_parents = node, len(rows)
        return cls(indptr, codes, child, sizes, n)

    def to(self, device: torch.device | str) -> "PrefixTrie":
        """A copy on ``device`` (memoized, so evaluating batch after batch moves the trie once)."""
        device = torch.device(device)
        if device == self.device:
            return self
        if str(device) not in self._copies:
            move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
            self._copies[str(device)] = PrefixTrie(move(self.indptr), move(self.codes), move(self.child),
                                                   self.level_sizes, self.num_items)
        return self._copies[str(device)]

    @property
    def device(self) -> torch.device:
        return self.indptr[0].device

    def children(self, level: int, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """Valid next codes of prefix nodes at depth ``level``.

        nodes [R] (node ids; negative = dead beam, no children) -> (valid [R, C_l] bool,
        child [R, C_l] int64: node id at depth level+1 / item id at the last level, -1 where invalid).
        """
        c, f = self.level_sizes[level], self.max_children[level]
        alive = nodes >= 0
        n = nodes.clamp(min=0)
        ptr = self.indptr[level]
        start, count = ptr[n], ptr[n + 1] - ptr[n]
        offs = torch.arange(f, device=nodes.device)
        ok = (offs[None, :] < count[:, None]) & alive[:, None]  # [R, F]
        edge = (start[:, None] + offs).clamp(max=max(len(self.codes[level]) - 1, 0))
        code = torch.where(ok, self.codes[level][edge].long(), c)  # invalid -> spill column c
        kid = self.child[level][edge].long()
        valid = torch.zeros(len(nodes), c + 1, dtype=torch.bool, device=nodes.device)
        valid.scatter_(1, code, ok)
        table = torch.full((len(nodes), c + 1), -1, dtype=torch.long, device=nodes.device)
        table.scatter_(1, code, torch.where(ok, kid, -1))
        return valid[:, :c], table[:, :c]

    def contains(self, sids: Tensor) -> Tensor:
        """Whether each SID row [R, L] is in the catalog -> [R] bool."""
        return self.item_of(sids) >= 1

    def item_of(self, sids: Tensor) -> Tensor:
        """Item id (1..N) of each SID row [R, L]; -1 where the SID is not in the catalog."""
        node = torch.zeros(sids.size(0), dtype=torch.long, device=sids.device)
        for l in range(self.num_levels):
            code = sids[:, l].long().clamp(0, self.level_sizes[l] - 1)
            _, table = self.children(l, node)
            ok = (sids[:, l] >= 0) & (sids[:, l] < self.level_sizes[l])
            node = torch.where(ok, table.gather(1, code[:, None])[:, 0], -1)
        return node
