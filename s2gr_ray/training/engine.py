"""⑥ Training engines behind one small interface: DeepSpeed (default) and plain DDP (for comparison).

Everything DeepSpeed needs is derived from TrainConfig here, in one place (`deepspeed_config`); there is no
hand-kept second JSON. Engines expose: `train_step(batch) -> terms`, `module` (the bare model), `lr`,
`save(dir, client_state)`, `load(dir) -> client_state`, `state_dict_for_export()`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from s2gr_ray.config import TrainConfig


def resolve_precision(cfg: TrainConfig, use_cuda: bool) -> str:
    if cfg.precision == "auto":
        return "bf16" if use_cuda and cfg.engine == "deepspeed" else "fp32"
    return cfg.precision


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warmup, then cosine decay to 10% (or constant) — the schedule both engines share."""
    warmup = max(0, cfg.warmup_steps)
    total = max(total_steps, warmup + 1)

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


def deepspeed_config(cfg: TrainConfig, world_size: int, precision: str) -> dict[str, Any]:
    """The DeepSpeed JSON, derived from our config (the only place it is built)."""
    micro = cfg.batch_size // (world_size * cfg.grad_accum_steps)
    return {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.grad_clip if cfg.grad_clip > 0 else 0.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        # amp: DeepSpeed owns the bf16 autocast of its forward. Without this section it switches an outer CUDA
        # autocast off inside the engine (the forward silently ran fp32); no module communicates in bf16 ([])
        "torch_autocast": {"enabled": precision == "amp", "dtype": "bfloat16", "lower_precision_safe_modules": []},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def micro_batch_size(cfg: TrainConfig, world_size: int) -> int:
    return cfg.batch_size // (world_size * cfg.grad_accum_steps)


def _forward(model, batch: dict[str, torch.Tensor], precision: str = "fp32"):
    """The training forward; precision "amp" runs it under bf16 autocast (weights and optimizer stay fp32)."""
    device_type = batch["history"].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "amp"):
        args = (batch["history"], batch["history_mask"], batch["target_sids"])
        if "encoder_chunks" in batch:  # a CPU tensor (no device sync): S2GR.encode's row blocks
            return model(*args, chunks=[tuple(c) for c in batch["encoder_chunks"].tolist()])
        return model(*args)


class DeepSpeedEngine:
    """DeepSpeed engine (ZeRO 0–3, fp32/bf16, accumulation, clipping, LR schedule)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, world_size: int, total_steps: int,
                 device: torch.device):
        import deepspeed

        from s2gr_ray.training.ds_ops import clear_stale_lock, use_environment_build_root

        use_environment_build_root()  # JIT-built ops per Python environment (see ds_ops)
        if device.type == "cpu":  # the first initialize on a CPU node JIT-builds DeepSpeed's shared-memory op
            clear_stale_lock()
        self.precision = resolve_precision(cfg, device.type == "cuda")
        if cfg.zero_stage == 3 and hasattr(model, "memory_reassociation"):
            model.memory_reassociation = False  # ZeRO-3 gathers a weight only inside its own module's forward
        optimizer = make_optimizer(model, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
        self.ds_config = deepspeed_config(cfg, world_size, self.precision)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False)
        self.device = device
        self.zero_stage = cfg.zero_stage

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def global_step(self) -> int:
        return self.engine.global_steps

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.engine.train()
        out = _forward(self.engine, batch, self.precision)
        self.engine.backward(out.loss)
        self.engine.step()
        return {"loss": out.loss.detach(), **out.terms}

    def save(self, folder: Path, client_state: dict) -> None:
        self.engine.save_checkpoint(str(folder), tag="engine", client_state=client_state)

    def load(self, folder: Path) -> dict:
        missing = (f"no DeepSpeed engine checkpoint (tag 'engine') in {folder}: the checkpoint is incomplete; "
                   f"delete it (Ray Train then resumes from the one before) or start over")
        if not any((Path(folder) / "engine").glob("*model_states.pt")):  # DeepSpeed: a bare assert
            raise RuntimeError(missing)
        path, client_state = self.engine.load_checkpoint(str(folder), tag="engine")
        if path is None:  # DeepSpeed warns and returns (None, None): never go on training fresh weights
            raise RuntimeError(missing)
        return client_state or {}

    def state_dict_for_export(self) -> dict[str, torch.Tensor]:
        """Full fp32 weights on CPU for evaluation snapshots and the exported model. Under precision=bf16 the
        module holds bf16 copies; the weights come from the optimizer's fp32 master copies (`_master_weights`),
        not from the bf16 rounding of them. Every rank calls this: the ZeRO-2/3 gathers are collectives."""
        import deepspeed

        params = list(self.module.parameters())
        master = _master_weights(self.engine.optimizer, params) if self.precision == "bf16" else {}
        # ZeRO-3 gathers only what has no master (none, under bf16: the masters are gathered already); the same
        # list on every rank, as the collective needs; an empty list makes the context a no-op
        rest = [p for p in params if id(p) not in master]
        ctx = deepspeed.zero.GatheredParameters(rest) if self.zero_stage == 3 else _null()
        with ctx:
            return {k: master[id(v)] if id(v) in master else
                    v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                    for k, v in self.module.state_dict(keep_vars=True).items()}


def _master_weights(optimizer, params: list[torch.nn.Parameter]) -> dict[int, torch.Tensor]:
    """The fp32 master copy of each low-precision parameter (by id), on CPU. ZeRO-1/2/3 and DeepSpeed's
    BF16_Optimizer map a parameter to its (partitioned) master (`safe_get_full_fp32_param` gathers it); ZeRO-0
    wraps the torch optimizer in an FP16 optimizer that keeps per-group master lists beside the bf16 groups."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for p in params:
        full = safe_get_full_fp32_param(p)
        if full is not None:
            out[id(p)] = full.detach().float().cpu().clone()
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if not out and low and high:
        for low_group, high_group in zip(low, high):
            for lp, hp in zip(low_group, high_group):
                out[id(lp)] = hp.detach().float().cpu().clone()
    missing = [p.shape for p in params if p.requires_grad and id(p) not in out]
    if missing:  # e.g. a fused FP16_Optimizer (flat master groups): never export the bf16 rounding silently
        raise RuntimeError(f"no fp32 master copy found for {len(missing)} trained parameter(s) under "
                           f"{type(optimizer).__name__}; use train.precision=amp or fp32")
    return out


class DDPEngine:
    """Plain torch DDP through Ray Train's prepare_model (fp32), same interface."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, world_size: int, total_steps: int,
                 device: torch.device):
        from ray.train.torch import prepare_model

        self.model = prepare_model(model, move_to_device=True)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total_steps))
        self.cfg = cfg
        self.micro = 0
        self.steps = 0
        self.precision = "amp" if cfg.precision == "amp" else "fp32"

    @property
    def module(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def global_step(self) -> int:
        return self.steps

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.model.train()
        out = _forward(self.model, batch, self.precision)
        (out.loss / self.cfg.grad_accum_steps).backward()
        self.micro += 1
        if self.micro % self.cfg.grad_accum_steps == 0:
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.steps += 1
        return {"loss": out.loss.detach(), **out.terms}

    def save(self, folder: Path, client_state: dict) -> None:
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_rank() == 0:
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "steps": self.steps},
                       Path(folder) / "ddp_engine.pt")

    def load(self, folder: Path) -> dict:
        state = torch.load(Path(folder) / "ddp_engine.pt", map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
        return {}

    def state_dict_for_export(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def make_engine(model, cfg: TrainConfig, world_size: int, total_steps: int, device: torch.device):
    if cfg.compile:  # in place (nn.Module.compile): the engines call the compiled forward, state_dict keys unchanged
        model.compile()
    cls = DeepSpeedEngine if cfg.engine == "deepspeed" else DDPEngine
    return cls(model, cfg, world_size, total_steps, device)
