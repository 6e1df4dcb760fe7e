"""⑦ The S2GR model: T5-style encoder-decoder over SID tokens with stepwise thinking vectors (S2GR.md Stage B).

Public API: S2GR, ModelOutput, TeacherForced, check_signature, Slot, build_plan, DecoderCache.
"""
from s2gr_ray.model.layers import DecoderCache
from s2gr_ray.model.plan import Slot, build_plan
from s2gr_ray.model.s2gr import S2GR, ModelOutput, TeacherForced, check_signature

__all__ = ["S2GR", "ModelOutput", "TeacherForced", "check_signature", "Slot", "build_plan", "DecoderCache"]
