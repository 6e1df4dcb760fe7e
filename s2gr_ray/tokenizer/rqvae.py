"""RQ-VAE (TIGER) with the CoBa additions, and RQ-KMeans (S2GR.md Stage A item 4).

    x [B, d] -> MLP encoder (hidden_dims) -> z [B, D] -> L residual levels (codebook l: [C_l, D])
             -> z_q = Σ_l e_l -> MLP decoder (reversed hidden_dims) -> x̂ [B, d]
    loss = MSE(x̂, target) + Σ_l [ MSE(e_l, sg r_l) + β · MSE(r_l, sg e_l) ] (+ uniformity)
    gradients reach the encoder through the straight-through estimator z + sg(z_q - z).

Codebooks are initialised by k-means on the latents of the whole catalog (at most tokenizer.kmeans_max_points
of them), level by level on the residuals. Selection uses the load-balancing bias (balance.py) when enabled.
RQ-KMeans: the same residual scheme directly on the input vectors, every codebook fitted by k-means; no net.
Shapes: B batch, d input dims, D latent dims, L levels, C_l codes of level l.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from s2gr_ray.tokenizer.balance import BalanceBias, uniformity_penalty
from s2gr_ray.tokenizer.kmeans import kmeans, nearest


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, in_dim: int, hidden_dims: list[int], latent_dim: int, codebook_sizes: list[int]):
        super().__init__()
        self.encoder = mlp([in_dim, *hidden_dims, latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), in_dim])
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(c, latent_dim) / math.sqrt(latent_dim)) for c in codebook_sizes])

    def quantize(self, z: torch.Tensor, balance: BalanceBias | None = None, train: bool = False):
        """Residual quantisation of z [B, D] -> codes [B, L], z_q [B, D] (= Σ chosen codes, grad to codebooks),
        per-level codebook losses and commitment losses (the caller weights them). ``train`` updates the
        balance state (scale, bias) from this batch's choices."""
        residual = z
        codes, quantised, cb_losses, commit_losses = [], torch.zeros_like(z), [], []
        for lvl, book in enumerate(self.codebooks):
            r = residual.detach()
            with torch.no_grad():
                d = _sq(r, book.detach())
                if balance is not None:
                    if train:
                        balance.observe_scale(lvl, d.min(1).values)
                    idx = (d + balance.effective(lvl)[None, :]).argmin(1)
                else:
                    idx = d.argmin(1)
            # one-hot matmul instead of book[idx]: the backward of indexing accumulates with atomics on CPU
            # and broke run-to-run determinism; a GEMM is deterministic (and cheap: B x C x D)
            e = torch.nn.functional.one_hot(idx, book.shape[0]).to(book.dtype) @ book
            cb_losses.append(torch.mean((e - residual.detach()) ** 2))
            commit_losses.append(torch.mean((residual - e.detach()) ** 2))
            if train and balance is not None:
                balance.update(lvl, idx)
            codes.append(idx)
            quantised = quantised + e
            residual = residual - e.detach()
        return torch.stack(codes, 1), quantised, cb_losses, commit_losses

    def forward(self, x: torch.Tensor, balance: BalanceBias | None = None, train: bool = False):
        z = self.encoder(x)
        codes, zq, cb, commit = self.quantize(z, balance, train)
        z_st = z + (zq - z).detach()
        return self.decoder(z_st), codes, cb, commit


def _sq(r: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    return ((r * r).sum(1, keepdim=True) - 2.0 * r @ book.T + (book * book).sum(1)[None, :]).clamp_min(0.0)


@torch.no_grad()
def encode_all(model: RQVAE, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    return torch.cat([model.encoder(x[s:s + chunk]) for s in range(0, x.shape[0], chunk)])


@torch.no_grad()
def kmeans_init_codebooks(model: RQVAE, x: torch.Tensor, seed: int, max_points: int) -> None:
    """Level-by-level k-means of the catalog's latents / residuals (allow_fewer: residuals may collapse)."""
    gen = torch.Generator().manual_seed(seed)
    if max_points and x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=gen)[:max_points].to(x.device)]
    residual = encode_all(model, x)
    for lvl, book in enumerate(model.codebooks):
        centres, assign = kmeans(residual, book.shape[0], seed=seed + lvl, iters=25, allow_fewer=True)
        book.data.copy_(centres)
        residual = residual - centres[assign]


def train_rqvae(x: torch.Tensor, target: torch.Tensor, cfg, *, use_balance: bool, use_uniformity: bool,
                log: Callable[[str], None], utilization: Callable[[RQVAE, BalanceBias | None], list[float]]
                ) -> tuple[RQVAE, BalanceBias | None, dict]:
    """Train on input x [N, d] to reconstruct target [N, d]. Caller seeds the global torch RNG (fork_rng)."""
    sizes = [int(c) for c in cfg.codebook_sizes]
    model = RQVAE(x.shape[1], [int(h) for h in cfg.hidden_dims], cfg.latent_dim, sizes).to(x.device)
    if cfg.kmeans_init:
        kmeans_init_codebooks(model, x, cfg.seed, cfg.kmeans_max_points)
    balance = (BalanceBias(sizes, cfg.balance_gamma, cfg.balance_max_bias, x.device, cfg.balance_scale_momentum)
               if use_balance else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    n, bs = x.shape[0], min(int(cfg.batch_size), x.shape[0])
    history: dict[str, float] = {}
    t0 = time.time()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=gen).to(x.device)
        totals = {"loss": 0.0, "recon": 0.0, "uniformity": 0.0}
        steps = 0
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            if len(idx) < max(2, bs // 4) and steps:  # skip a tiny tail batch (the next epoch reshuffles)
                continue
            x_hat, _, cb, commit = model(x[idx], balance, train=True)
            recon = torch.mean((x_hat - target[idx]) ** 2)
            loss = recon + sum(cb) + cfg.commitment_beta * sum(commit)
            uni = torch.zeros((), device=x.device)
            if use_uniformity and cfg.uniformity_weight > 0:
                uni = sum(uniformity_penalty(b, cfg.uniformity_margin) for b in model.codebooks)
                loss = loss + cfg.uniformity_weight * uni
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            totals["loss"] += loss.item()
            totals["recon"] += recon.item()
            totals["uniformity"] += float(uni.detach())
            steps += 1
        history = {k: v / max(steps, 1) for k, v in totals.items()}
        if cfg.log_every and (epoch % cfg.log_every == 0 or epoch == 1 or epoch == cfg.epochs):
            util = utilization(model, balance)
            log(f"tokenizer epoch {epoch}/{cfg.epochs} loss {history['loss']:.5f} recon {history['recon']:.5f} "
                f"utilization {' '.join(f'{u:.3f}' for u in util)} ({time.time() - t0:.0f}s)")
    return model, balance, history


def residual_kmeans(x: torch.Tensor, sizes: list[int], seed: int, max_points: int,
                    iters: int = 50) -> list[torch.Tensor]:
    """RQ-KMeans codebooks [C_l, d] fitted on the input vectors' successive residuals."""
    books = []
    residual = x
    for lvl, c in enumerate(sizes):
        centres, _ = kmeans(residual, c, seed=seed + lvl, iters=iters, max_points=max_points, allow_fewer=True)
        assign, _ = nearest(residual, centres)
        books.append(centres)
        residual = residual - centres[assign]
    return books
