"""T5-style transformer blocks with a KV cache (S2GR.md "Stage B — the model").

Pre-norm blocks (RMSNorm, no biases, as T5), attention through ``F.scaled_dot_product_attention`` with
``num_heads x d_head`` that may differ from ``d_model`` (T5: 6 x 64 with d_model 128). Positions are NOT handled
here: the model adds learned position embeddings to the inputs (see s2gr.py).

Shape legend: B users, K beams per user (the decoder batch is B*K, K = 1 in training), n new decoder positions
in one step, S cached decoder positions, M encoder positions (T history items x L_total levels), D d_model,
H heads, E d_head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout. On CPU the keep mask comes from 8 random bits per element (one 64-bit draw serves 8
    elements): ~3x cheaper than F.dropout's per-element Bernoulli, which took 15-20% of a CPU training step. The drop
    probability is rounded to a multiple of 1/256 (0.1 -> 26/256) and the scale uses the rounded value, so the
    expectation is exact. Under torch.compile on CPU the mask is drawn the same way by an opaque op (`keep_mask`):
    inductor's own per-element draw made a compiled TIGER-size step 0.80x the eager one. Other devices use
    F.dropout (fused into the kernel when compiled)."""
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    threshold = min(255, max(1, round(p * 256)))
    if torch.compiler.is_compiling():
        keep = keep_mask(x.detach(), threshold)
    else:
        keep = _keep_mask(x, threshold)
    scale = 256.0 / (256 - threshold)
    if x.dtype == torch.float32:  # one float mask: ~30% cheaper forward + backward than bool mask then scale
        return x * keep.to(x.dtype).mul_(scale)
    return x * keep * scale  # bf16 & co: a bf16 mask would round the scale (a bias of ~0.3%)


def _keep_mask(like: Tensor, threshold: int) -> Tensor:
    """Bool mask shaped like `like`, True with probability (256 - threshold) / 256, from 8 random bits per element."""
    n = like.numel()
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=like.device)
    return bits.view(torch.uint8)[:n].view(like.shape) >= threshold


# `_keep_mask` as one opaque op for torch.compile: the graph calls it rather than tracing the draw. It takes the
# tensor being dropped (not just its shape) so that no compiler pass can merge the draws of two tensors of equal
# shape into one (two draws over the same tensor would merge: the model never drops one tensor twice).
@torch.library.custom_op("s2gr::keep_mask", mutates_args=(), device_types="cpu",
                         tags=(torch.Tag.nondeterministic_seeded,))  # a tuple: torch 2.11 needs an iterable
def keep_mask(like: Tensor, threshold: int) -> Tensor:
    return _keep_mask(like, threshold)


@keep_mask.register_fake
def _(like: Tensor, threshold: int) -> Tensor:
    return torch.empty_like(like, dtype=torch.bool)


class Dropout(nn.Module):
    """nn.Dropout with the CPU-fast mask of `dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


class FeedForward(nn.Module):
    """D -> d_ff -> D with GELU (T5's dense-act-dense)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(self.drop(F.gelu(self.wi(x))))


FEW_QUERIES = 2  # Attention.attend: steps of at most this many queries per row use _attend_few


class Attention(nn.Module):
    """Multi-head attention with separate q / kv projections so K/V can be cached or precomputed."""

    def __init__(self, d_model: int, num_heads: int, d_head: int, dropout: float) -> None:
        super().__init__()
        self.h, self.e = num_heads, d_head
        self.q = nn.Linear(d_model, num_heads * d_head, bias=False)
        self.k = nn.Linear(d_model, num_heads * d_head, bias=False)
        self.v = nn.Linear(d_model, num_heads * d_head, bias=False)
        self.o = nn.Linear(num_heads * d_head, d_model, bias=False)
        self.dropout = dropout

    def _split(self, x: Tensor) -> Tensor:  # [N, S, H*E] -> [N, H, S, E]
        return x.view(x.size(0), x.size(1), self.h, self.e).transpose(1, 2)

    def project_kv(self, src: Tensor) -> tuple[Tensor, Tensor]:
        return self._split(self.k(src)), self._split(self.v(src))

    def attend(self, q_in: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """q_in [N, n, D] (unprojected), k/v [N, H, S, E], mask broadcastable to [N, H, n, S] (True = attend)."""
        q = self._split(self.q(q_in))
        p = self.dropout if self.training else 0.0
        if q_in.size(1) <= FEW_QUERIES:  # the thinking chain's short steps: see _attend_few
            out = self._attend_few(q, k, v, mask, p)
        elif p > 0 and q.device.type == "cpu":  # training on CPU: see _attend_dropped
            out = self._attend_dropped(q, k, v, mask, p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.o(out.transpose(1, 2).reshape(q_in.size(0), q_in.size(1), self.h * self.e))

    def _attend_dropped(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
        """Attention with dropout on the weights, on CPU: q [N, H, n, E] vs k/v [N, H, S, E] -> [N, H, n, E].

        With dropout_p > 0 scaled_dot_product_attention falls back to its math path on CPU, which draws the weights'
        mask per element (aten::bernoulli_) and scans every row for -inf (aten::all, isneginf): ~6% of a TIGER-size
        training step with one token per SID code. The same math with `dropout`'s 8-bit mask, and a finite fill for
        masked keys (a row whose keys are all masked attends uniformly instead of giving NaN)."""
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.e ** -0.5  # [N, H, n, S]
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.matmul(dropout(scores.softmax(-1), p, training=True), v)

    def _attend_few(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
        """Attention of a few queries per row, q [N, H, n, E] vs k/v [N, H, S, E] -> [N, H, n, E].

        Broadcast multiply-and-sum instead of scaled_dot_product_attention: with a few queries the fused kernel's
        backward zero-fills and re-reads whole [N, H, S, E] buffers per call, which made the stepwise thinking
        chain (short decoder steps) ~1.5x slower than the same work as one call on CPU. Same math."""
        scores = (q[:, :, :, None, :] * k[:, :, None]).sum(-1) * self.e ** -0.5  # [N, H, n, S]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        a = dropout(scores.softmax(-1), p, training=p > 0)
        return (a[..., None] * v[:, :, None]).sum(3)

    def attend_memory(self, q_in: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        """Queries against the unprojected memory: q_in [N, n, D], memory [N, M, D], mask [N, M] -> [N, n, D].

        Exactly attend(q_in, *project_kv(memory), mask) re-associated: q·(W_k m) = (W_k^T q)·m and
        Σ a·(W_v m) = W_v (Σ a·m), so the memory is never projected to per-head K/V (H*E x M per row). Cheaper
        while the queries per row over a whole decode stay below ~M*H*E / (H*E + H*M): the auxiliary decoder (one
        learned query) and the teacher-forced thinking chain (one query per call) use it."""
        rows, t, h, e = q_in.size(0), q_in.size(1), self.h, self.e
        d = q_in.size(-1)
        q = self.q(q_in).view(rows, t, h, e)
        qk = torch.einsum("nthe,hed->nhtd", q, self.k.weight.view(h, e, d)).reshape(rows, h * t, d)
        scores = torch.bmm(qk, memory.transpose(1, 2)) * e ** -0.5  # [N, H*n, M]
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        a = dropout(scores.softmax(-1), self.dropout, self.training)
        ctx = torch.bmm(a, memory).view(rows, h, t, d)  # [N, H, n, D]
        out = torch.einsum("nhtd,hed->nthe", ctx, self.v.weight.view(h, e, d))
        return self.o(out.reshape(rows, t, h * e))

    def attend_beams(self, q_in: Tensor, k: Tensor, v: Tensor, mask: Tensor, beams: int) -> Tensor:
        """Cross-attention of B*K beam rows against per-user memory k/v [B, H, M, E] without copying it.

        Beams of one user are folded into extra query positions (queries never interact in attention), so the
        encoder memory is never expanded to the beam width.
        """
        bk, n, _ = q_in.shape
        b = bk // beams
        q = self.q(q_in).view(b, beams * n, self.h, self.e).transpose(1, 2)  # [B, H, K*n, E]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # [B, H, K*n, E]
        return self.o(out.transpose(1, 2).reshape(bk, n, self.h * self.e))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_head: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(d_model), RMSNorm(d_model)
        self.attn = Attention(d_model, num_heads, d_head, dropout)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, M, D]; mask [B, 1, 1, M] True = real key."""
        h = self.norm1(x)
        k, v = self.attn.project_kv(h)
        x = x + self.drop(self.attn.attend(h, k, v, mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderCache:
    """Per-layer self-attention K/V of the decoded prefix + precomputed cross-attention K/V of the memory.

    self_k / self_v: [B*K, H, S, E] per layer (grow by n per step; autograd flows through them in training).
    cross_k / cross_v: [B, H, M, E] per layer, computed once per user and shared by all of the user's beams.
    """

    def __init__(self, cross_k: list[Tensor], cross_v: list[Tensor], memory_mask: Tensor,
                 memory: Tensor | None = None, num_layers: int = 0) -> None:
        self.cross_k, self.cross_v = cross_k, cross_v
        self.memory = memory  # unprojected memory [B, M, D] when the K/V are not precomputed (attend_memory)
        self.cross_mask = memory_mask[:, None, None, :]  # [B, 1, 1, M]
        layers = num_layers or len(cross_k)
        self.self_k: list[Tensor | None] = [None] * layers
        self.self_v: list[Tensor | None] = [None] * layers
        self.beams = 1
        self.length = 0

    @property
    def batch(self) -> int:
        return self.cross_mask.size(0)

    def reorder(self, index: Tensor, beams: int) -> None:
        """Keep rows ``index`` [B*K_new] of the B*K beam rows (parents of the new beams), now ``beams`` per user."""
        self.self_k = [k.index_select(0, index) for k in self.self_k]  # type: ignore[union-attr]
        self.self_v = [v.index_select(0, index) for v in self.self_v]  # type: ignore[union-attr]
        self.beams = beams


class DecoderLayer(nn.Module):
    """Causal self-attention (optional) + cross-attention to the encoder memory + FFN, all pre-norm."""

    def __init__(self, d_model: int, num_heads: int, d_head: int, d_ff: int, dropout: float,
                 self_attention: bool = True) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, num_heads, d_head, dropout) if self_attention else None
        self.norm1 = RMSNorm(d_model) if self_attention else None
        self.norm2, self.norm3 = RMSNorm(d_model), RMSNorm(d_model)
        self.cross_attn = Attention(d_model, num_heads, d_head, dropout)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, cache: DecoderCache, i: int) -> Tensor:
        """x [B*K, n, D] new positions; appends their K/V to ``cache`` layer ``i``; causal inside the step."""
        if self.self_attn is not None:
            h = self.norm1(x)  # type: ignore[misc]
            k, v = self.self_attn.project_kv(h)
            if cache.self_k[i] is not None:
                k = torch.cat([cache.self_k[i], k], dim=2)  # type: ignore[list-item]
                v = torch.cat([cache.self_v[i], v], dim=2)  # type: ignore[list-item]
            cache.self_k[i], cache.self_v[i] = k, v
            n, s = x.size(1), k.size(2)
            mask = None
            if n > 1:  # query j (absolute position s-n+j) sees keys 0..s-n+j
                mask = torch.arange(s, device=x.device)[None, :] <= torch.arange(s - n, s, device=x.device)[:, None]
            x = x + self.drop(self.self_attn.attend(h, k, v, mask))
        h = self.norm2(x)
        if cache.memory is not None:
            a = self.cross_attn.attend_memory(h, cache.memory, cache.cross_mask[:, 0, 0])
        elif cache.beams == 1:
            a = self.cross_attn.attend(h, cache.cross_k[i], cache.cross_v[i], cache.cross_mask)
        else:
            a = self.cross_attn.attend_beams(h, cache.cross_k[i], cache.cross_v[i], cache.cross_mask, cache.beams)
        x = x + self.drop(a)
        return x + self.drop(self.ffn(self.norm3(x)))


class Decoder(nn.Module):
    """Stack of decoder layers + final RMSNorm; incremental through a DecoderCache."""

    def __init__(self, num_layers: int, d_model: int, num_heads: int, d_head: int, d_ff: int, dropout: float,
                 self_attention: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, d_head, d_ff, dropout, self_attention)
                                    for _ in range(num_layers))
        self.final_norm = RMSNorm(d_model)
        self.drop = Dropout(dropout)

    def new_cache(self, memory: Tensor, memory_mask: Tensor, project: bool = True) -> DecoderCache:
        """memory [B, M, D] (encoder output), memory_mask [B, M] True = real item token.

        project=False keeps the memory unprojected for single-query decoders (Attention.attend_memory)."""
        if not project:
            return DecoderCache([], [], memory_mask, memory, num_layers=len(self.layers))
        ks, vs = [], []
        for layer in self.layers:
            k, v = layer.cross_attn.project_kv(memory)
            ks.append(k)
            vs.append(v)
        return DecoderCache(ks, vs, memory_mask)

    def forward(self, x: Tensor, cache: DecoderCache) -> Tensor:
        """x [B*K, n, D] input embeddings (positions already added) -> final-normed hidden states [B*K, n, D]."""
        x = self.drop(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache, i)
        cache.length += x.size(1)
        return self.final_norm(x)
