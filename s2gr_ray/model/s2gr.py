"""The S2GR encoder-decoder with stepwise latent thinking (S2GR.md "Stage B — the model", "Losses").

Shape legend: B batch (users), T history items, L L_total SID levels (semantic + dedup), L_sem semantic
levels, C_l codes of level l, M = T*L encoder tokens, K beams, D d_model, D_lat codebook latent dim, K_c coarse
clusters.

History layout: ``history`` [B, T, L] holds each item's SID codes, items oldest -> newest and LEFT-aligned
(index 0 = oldest real item, padding at the end, ``history_mask`` False there; padded codes may be anything).
Positions are learned *(ours)*: encoder token = code embedding (one table, per-level offsets) + level
embedding + recency embedding (0 = newest item, counted over real items only, so any alignment works);
decoder input = BOS / code embedding / thinking vector + learned embedding of the decoder slot (plan.py).
Modules that a config switches off are not built, so every parameter gets a gradient (DDP-safe):
align projections exist iff n_think > 0 and w_align > 0; the auxiliary decoder iff aux_decoder_layers > 0 and
w_infonce > 0 (v_g is trained by L_InfoNCE only, so L_Reg is on iff that holds, w_reg > 0 and n_think > 0).
Initialization *(ours)*: the parameters an arm switches or reshapes (decoder slot embeddings, thinking vectors,
align projections, auxiliary decoder) draw from their own streams (``_own_stream``), so arms built with one seed
start every parameter they share from the same values: an ablation differs from the full model by what it
switches off, not by a shifted random stream.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2gr_ray.config import ModelConfig
from s2gr_ray.model.layers import Decoder, DecoderCache, Dropout, EncoderLayer, RMSNorm
from s2gr_ray.model.losses import align_loss, infonce_loss, rec_loss, reg_loss
from s2gr_ray.model.plan import Slot, build_plan, num_think_slots, training_chunks


class ModelOutput(NamedTuple):
    loss: Tensor  # scalar, differentiable
    terms: dict[str, Tensor]  # detached scalars: loss, rec, align, infonce, reg (0 when off), acc_l1.., acc_sid


class TeacherForced(NamedTuple):
    logits: list[Tensor]  # per level [B, C_l]
    thinks: Tensor | None  # thinking vectors (decoder inputs) [B, n_think_slots, D] in plan order; None if n_think=0


@contextmanager
def _own_stream(stream: int) -> Iterator[None]:
    """Parameters created inside draw from torch's CPU stream reseeded with (initial seed + stream); the caller's
    stream is left where it was, so what is built after does not depend on what was built inside."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed((torch.initial_seed() + 7919 * stream) % 2**63)
        yield


class S2GR(nn.Module):
    def __init__(self, cfg: ModelConfig, level_sizes: Sequence[int], num_semantic_levels: int,
                 coarse_centres: Sequence[Tensor] | None = None, code_to_cluster: Sequence[Tensor] | None = None,
                 max_history: int = 20) -> None:
        super().__init__()
        sizes = tuple(int(c) for c in level_sizes)
        if not 1 <= num_semantic_levels <= len(sizes) <= num_semantic_levels + 1 or min(sizes) < 1:
            raise ValueError(f"S2GR: level_sizes {list(sizes)} must hold the {num_semantic_levels} semantic levels "
                             "plus at most one dedup level (tokenizer artifacts)")
        if cfg.placement == "upfront" and cfg.think_on_dedup:
            raise ValueError("model.think_on_dedup applies to stepwise placement only")
        self.cfg, self.level_sizes, self.max_history = cfg, sizes, int(max_history)
        self.num_levels, self.num_semantic_levels = len(sizes), int(num_semantic_levels)
        d, n_think = cfg.d_model, cfg.n_think
        self.register_buffer("offsets", torch.tensor([0, *sizes[:-1]]).cumsum(0), persistent=False)

        block = (d, cfg.num_heads, cfg.d_head, cfg.d_ff, cfg.dropout)
        self.code_emb = nn.Embedding(sum(sizes), d)  # shared by encoder, decoder inputs and L_InfoNCE targets
        self.level_emb = nn.Embedding(self.num_levels, d)
        self.recency_emb = nn.Embedding(self.max_history, d)
        self.enc_drop = Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(*block) for _ in range(cfg.encoder_layers))
        self.enc_norm = RMSNorm(d)

        self.plan: list[Slot] = build_plan(self.num_levels, self.num_semantic_levels, n_think, cfg.placement,
                                           cfg.think_on_dedup)
        self.chunks = training_chunks(self.plan)
        self.bos = nn.Parameter(torch.randn(d))
        with _own_stream(1):  # its length follows the plan (n_think, placement)
            self.dec_pos = nn.Embedding(len(self.plan), d)
            nn.init.normal_(self.dec_pos.weight, std=0.5)
        self.decoder = Decoder(cfg.decoder_layers, *block)
        self.heads = nn.ModuleList(nn.Linear(d, c, bias=False) for c in sizes)
        n_slots = num_think_slots(self.plan)
        with _own_stream(2):
            self.think_p = nn.Parameter(0.5 * torch.randn(n_slots, d)) if n_slots else None

        self.has_centres = coarse_centres is not None
        if (coarse_centres is None) != (code_to_cluster is None):
            raise ValueError("S2GR: pass coarse_centres and code_to_cluster together (tokenizer coarse clusters)")
        if coarse_centres is not None:
            self._register_clusters(coarse_centres, code_to_cluster)  # type: ignore[arg-type]
        self.use_align = n_think > 0 and cfg.w_align > 0
        if self.use_align:
            if not self.has_centres:
                raise ValueError("S2GR: model.w_align > 0 needs coarse_centres and code_to_cluster from the "
                                 "tokenizer; pass them or set model.w_align=0")
            with _own_stream(3):
                self.align_proj = nn.ModuleList(nn.Linear(d, self.latent_dim, bias=False)
                                                for _ in range(self.num_semantic_levels))
        self.use_infonce = cfg.aux_decoder_layers > 0 and cfg.w_infonce > 0
        self.use_reg = self.use_infonce and cfg.w_reg > 0 and n_think > 0
        if self.use_infonce:
            with _own_stream(4):
                self.aux_query = nn.Parameter(torch.randn(d))
                self.aux_decoder = Decoder(cfg.aux_decoder_layers, *block, self_attention=False)
                # model.infonce_proj: the map of models trained before it was optional (S2GR.md scores v_g itself)
                self.infonce_proj = nn.Linear(d, d, bias=False) if cfg.infonce_proj else nn.Identity()
        for emb in (self.level_emb, self.recency_emb):
            nn.init.normal_(emb.weight, std=0.5)
        # Cross-attention may read K/V weights outside their Linear's forward (Attention.attend_memory); engines
        # that gather parameters per module forward (DeepSpeed ZeRO-3) switch this off (same math, projected K/V).
        self.memory_reassociation = True

    def _register_clusters(self, centres: Sequence[Tensor], maps: Sequence[Tensor]) -> None:
        if len(centres) != self.num_semantic_levels or len(maps) != self.num_semantic_levels:
            raise ValueError(f"S2GR: need coarse_centres / code_to_cluster for each of the {self.num_semantic_levels}"
                             f" semantic levels, got {len(centres)} / {len(maps)}")
        for l, (c, m) in enumerate(zip(centres, maps)):
            c, m = torch.as_tensor(c, dtype=torch.float32), torch.as_tensor(m, dtype=torch.long)
            if c.dim() != 2 or m.shape != (self.level_sizes[l],) or m.min() < 0 or m.max() >= c.size(0):
                raise ValueError(f"S2GR: level {l}: coarse_centres must be [K_c, D_lat] and code_to_cluster "
                                 f"[{self.level_sizes[l]}] with values < K_c; got {tuple(c.shape)}, {tuple(m.shape)}")
            self.register_buffer(f"centres_{l}", c.clone())
            self.register_buffer(f"code_to_cluster_{l}", m.clone())
        self.latent_dim = int(centres[0].shape[1])
        self.num_coarse = [int(c.shape[0]) for c in centres]

    def centres(self, level: int) -> Tensor:
        return getattr(self, f"centres_{level}")

    def code_to_cluster(self, level: int) -> Tensor:
        return getattr(self, f"code_to_cluster_{level}")

    # ---------------------------------------------------------------------------------------------- encoder
    def encode(self, history: Tensor, history_mask: Tensor,
               chunks: Sequence[tuple[int, int]] | None = None) -> tuple[Tensor, Tensor]:
        """history [B, T, L], history_mask [B, T] -> memory [B, M, D], memory_mask [B, M] (True = real token).

        M = T * L with model.history_tokens = "code" (TIGER's layout), M = T with "item" (4x fewer encoder tokens).
        ``chunks`` [(end_row, items), ...] (rows sorted by history length, see ``length_chunks``): the encoder layers
        run on each block of rows cut to its own longest history, and the memory is zero beyond it (masked there).
        Exact: the same memory at every real token, for a fraction of the padded work."""
        b, t, l = history.shape
        if l != self.num_levels or t > self.max_history:
            raise ValueError(f"S2GR.encode: history {tuple(history.shape)} must be [B, T <= {self.max_history}, "
                             f"{self.num_levels}] (data.max_history / tokenizer levels)")
        mask = history_mask.bool()
        first = torch.arange(t, device=mask.device) == 0
        mask = mask | (~mask.any(1, keepdim=True) & first)  # an empty history attends to slot 0: stays finite
        codes = torch.where(mask[..., None], history.long(), 0) + self.offsets
        recency = (mask.flip(1).long().cumsum(1).flip(1) - mask.long()).clamp(max=self.max_history - 1)
        levels = self.level_emb(torch.arange(l, device=mask.device))  # [L, D] (a module call: ZeRO-3 safe)
        if self.cfg.history_tokens == "item":  # one token per item: the sum of its code embeddings (ours)
            x = (self.code_emb(codes) + levels).sum(2) + self.recency_emb(recency)
            x, tok_mask, per_item = self.enc_drop(x), mask, 1
        else:  # TIGER's layout: one token per SID code
            x = self.code_emb(codes) + levels + self.recency_emb(recency)[:, :, None]
            x = self.enc_drop(x.reshape(b, t * l, -1))
            tok_mask, per_item = mask[:, :, None].expand(b, t, l).reshape(b, t * l), l
        attn_mask = tok_mask[:, None, None, :]
        if not chunks or len(chunks) < 2:
            for layer in self.encoder:
                x = layer(x, attn_mask)
            return self.enc_norm(x), tok_mask
        outs, start = [], 0
        for end, items in chunks:
            width = min(max(int(items), 1), t) * per_item
            y = x[start:end, :width]
            for layer in self.encoder:
                y = layer(y, attn_mask[start:end, :, :, :width])
            outs.append(F.pad(self.enc_norm(y), (0, 0, 0, x.size(1) - width)))
            start = end
        if start != b:
            raise ValueError(f"S2GR.encode: chunks cover rows [0, {start}) of a batch of {b}")
        return torch.cat(outs), tok_mask

    # ------------------------------------------------------------------------ incremental decoder (beam search)
    def new_cache(self, memory: Tensor, memory_mask: Tensor) -> DecoderCache:
        return self.decoder.new_cache(memory, memory_mask)

    def decode_step(self, x: Tensor, cache: DecoderCache) -> Tensor:
        """x [B*K, n, D] inputs of the next n slots -> final-normed outputs [B*K, n, D]; extends ``cache``."""
        pos = self.dec_pos(torch.arange(cache.length, cache.length + x.size(1), device=x.device))
        return self.decoder(x + pos, cache)

    def bos_input(self, rows: int) -> Tensor:
        return self.bos.expand(rows, 1, -1)

    def code_input(self, level: int, codes: Tensor) -> Tensor:
        """codes [N] of one level -> decoder input embeddings [N, D]."""
        return self.code_emb(codes + self.offsets[level])

    def think_input(self, h: Tensor, slot: Slot) -> Tensor:
        """Thinking vector t = (final-normed output at the previous slot) + p[level, j]: [N, D] -> [N, D]."""
        return (h.detach() if self.cfg.detach_think else h) + self.think_p[slot.think_index]  # type: ignore[index]

    def code_logits(self, h: Tensor, level: int) -> Tensor:
        return self.heads[level](h)

    def think_clusters(self, t: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Nearest coarse cluster of thinking vectors t [N, D] of a semantic level: (cluster [N], cosine [N])."""
        if not self.use_align:
            raise ValueError("S2GR: reading thinking vectors as clusters needs the align projection "
                             "(model.n_think > 0, model.w_align > 0 and the tokenizer's coarse centres)")
        z = nn.functional.normalize(self.align_proj[level](t).float(), dim=-1)
        sims = z @ nn.functional.normalize(self.centres(level).float(), dim=-1).T
        best = sims.max(-1)
        return best.indices, best.values

    # -------------------------------------------------------------------------------------- teacher forcing
    def decode_teacher_forced(self, memory: Tensor, memory_mask: Tensor, target: Tensor) -> TeacherForced:
        """Decode the plan with codes teacher-forced and thinking vectors generated (KV-cached, chunked)."""
        # Cross-attention reads the memory unprojected (Attention.attend_memory: same math) when that costs fewer
        # FLOPs than projecting per-head K/V of every memory token once: fed slots * (E + M) < M * E.
        fed, m, e = len(self.plan) - 1, memory.size(1), self.cfg.d_head
        unprojected = self.memory_reassociation and fed * (e + m) < m * e
        cache = self.decoder.new_cache(memory, memory_mask, project=not unprojected)
        b = target.size(0)
        pred: dict[int, Tensor] = {}
        thinks: list[Tensor] = []
        h_last = memory.new_zeros(0)
        for chunk in self.chunks:
            inputs = []
            for i in chunk:  # only a chunk's first slot can be a thinking slot (plan.training_chunks)
                slot = self.plan[i]
                if slot.kind == "think":
                    inputs.append(self.think_input(h_last, slot))
                    thinks.append(inputs[-1])
                elif slot.kind == "bos":
                    inputs.append(self.bos.expand(b, -1))
                else:
                    inputs.append(self.code_input(slot.level, target[:, slot.level]))
            x = torch.stack(inputs, dim=1)
            y = self.decode_step(x, cache)
            for k, i in enumerate(chunk):
                if self.plan[i + 1].kind == "code":
                    pred[self.plan[i + 1].level] = y[:, k]
            h_last = y[:, -1]
        logits = [self.code_logits(pred[l], l) for l in range(self.num_levels)]
        return TeacherForced(logits, torch.stack(thinks, dim=1) if thinks else None)

    def aux_vector(self, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Overall-interest vector v_g [B, D]: one learned query reading the encoder output."""
        cache = self.aux_decoder.new_cache(memory, memory_mask, project=not self.memory_reassociation)
        return self.aux_decoder(self.aux_query.expand(memory.size(0), 1, -1), cache)[:, 0]

    # -------------------------------------------------------------------------------------------- training
    def forward(self, history: Tensor, history_mask: Tensor, target: Tensor,
                chunks: Sequence[tuple[int, int]] | None = None) -> ModelOutput:
        """history [B, T, L] codes, history_mask [B, T] True = real item, target [B, L] -> ModelOutput.
        ``chunks``: see ``encode`` (an exact saving; the rows must be sorted by history length)."""
        cfg, target = self.cfg, target.long()
        memory, mmask = self.encode(history, history_mask, chunks)
        tf = self.decode_teacher_forced(memory, mmask, target)
        zero = memory.new_zeros((), dtype=torch.float32)
        rec = align = info = reg = zero
        if cfg.w_rec > 0:
            rec = rec_loss(tf.logits, target)
        if self.use_align:
            n = cfg.n_think
            align = sum(align_loss(self.align_proj[l](tf.thinks[:, l * n + n - 1]), self.centres(l),  # type: ignore
                                   self.code_to_cluster(l)[target[:, l]], cfg.tau_align)
                        for l in range(self.num_semantic_levels))
        if self.use_infonce:
            v_g = self.aux_vector(memory, mmask)
            item_repr = self.code_emb(target + self.offsets).mean(1)
            info = infonce_loss(self.infonce_proj(v_g), item_repr, target, cfg.tau_infonce)
            if self.use_reg:
                reg = reg_loss(tf.thinks[:, 0], v_g)  # type: ignore[index]
        loss = cfg.w_rec * rec + cfg.w_align * align + cfg.w_infonce * info + cfg.w_reg * reg
        terms = {"loss": loss.detach(), "rec": rec.detach(), "align": align.detach(),  # type: ignore[union-attr]
                 "infonce": info.detach(), "reg": reg.detach()}
        with torch.no_grad():
            hits = torch.stack([lg.argmax(-1) == target[:, l] for l, lg in enumerate(tf.logits)], dim=1)
            for l in range(self.num_levels):
                terms[f"acc_l{l + 1}"] = hits[:, l].float().mean()
            terms["acc_sid"] = hits.all(1).float().mean()
        return ModelOutput(loss, terms)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------ checkpoints
    def model_signature(self) -> dict[str, Any]:
        """What a checkpoint must match to be loaded into this model (see check_signature)."""
        cfg = self.cfg
        return {
            "level_sizes": list(self.level_sizes), "num_semantic_levels": self.num_semantic_levels,
            "max_history": self.max_history, "d_model": cfg.d_model, "num_heads": cfg.num_heads,
            "d_head": cfg.d_head, "d_ff": cfg.d_ff, "encoder_layers": cfg.encoder_layers,
            "decoder_layers": cfg.decoder_layers, "n_think": cfg.n_think, "placement": cfg.placement,
            "think_on_dedup": cfg.think_on_dedup, "history_tokens": cfg.history_tokens, "align": self.use_align, "infonce": self.use_infonce,
            "aux_decoder_layers": cfg.aux_decoder_layers if self.use_infonce else 0,
            "num_coarse": self.num_coarse if self.has_centres else None,
            "latent_dim": self.latent_dim if self.has_centres else None,
        }


def check_signature(saved: dict[str, Any], current: dict[str, Any], where: str = "checkpoint") -> None:
    """Raise a clear error when a checkpoint's model_signature() differs from the model being built."""
    diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{where} was trained with a different model/tokenizer ({lines}); rebuild the model with "
                         "the checkpoint's config and tokenizer artifacts, or retrain")
