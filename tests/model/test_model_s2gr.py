"""S2GR model: TIGER equivalence at n_think = 0, cache == full pass, no target leakage, DDP-safe params."""
from __future__ import annotations

import math

import pytest
import torch

from s2gr_ray.model import S2GR, check_signature
from s2gr_ray.model.toy import random_catalog, random_clusters, tiny_config, tiny_model

SIZES = [5, 4, 6, 3]  # 3 semantic levels + dedup


def _batch(b: int = 6, t: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    history = torch.stack([torch.randint(0, c, (b, t), generator=g) for c in SIZES], dim=-1)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    target = torch.stack([torch.randint(0, c, (b,), generator=g) for c in SIZES], dim=-1)
    return history, mask, target


def _ref_attn(attn, q_in, kv_in, mask):
    b, n, _ = q_in.shape
    split = lambda x: x.view(b, x.size(1), attn.h, attn.e).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.q(q_in)), split(attn.k(kv_in)), split(attn.v(kv_in))
    s = (q @ k.transpose(-1, -2) / math.sqrt(attn.e)).masked_fill(~mask, float("-inf"))
    return attn.o((s.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))


def _ref_decoder(model, x, memory, mmask):
    """Plain full-sequence causal decoder pass: explicit softmax attention, no cache, no SDPA."""
    s = x.size(1)
    x = x + model.dec_pos.weight[:s]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for layer in model.decoder.layers:
        h = layer.norm1(x)
        x = x + _ref_attn(layer.self_attn, h, h, causal)
        x = x + _ref_attn(layer.cross_attn, layer.norm2(x), memory, mmask[:, None, None, :])
        x = x + layer.ffn(layer.norm3(x))
    return model.decoder.final_norm(x)


CONFIGS = [dict(n_think=0), dict(n_think=1), dict(n_think=2), dict(n_think=1, placement="upfront"),
           dict(n_think=2, placement="upfront"), dict(n_think=1, think_on_dedup=True),
           dict(n_think=1, history_tokens="item")]
IDS = ["tiger", "step1", "step2", "up1", "up2", "step1dedup", "step1items"]


@pytest.mark.parametrize("kw", CONFIGS, ids=IDS)
def test_incremental_equals_full_pass(kw):
    model = tiny_model(SIZES, 3, seed=1, **kw).eval()
    history, mask, target = _batch()
    with torch.no_grad():
        memory, mmask = model.encode(history, mask)
        tf = model.decode_teacher_forced(memory, mmask, target)
        inputs, k = [], 0
        for slot in model.plan[:-1]:
            if slot.kind == "bos":
                inputs.append(model.bos.expand(len(target), -1))
            elif slot.kind == "think":
                inputs.append(tf.thinks[:, k])
                k += 1
            else:
                inputs.append(model.code_input(slot.level, target[:, slot.level]))
        y = _ref_decoder(model, torch.stack(inputs, 1), memory, mmask)
    k = 0
    for i, slot in enumerate(model.plan):
        if slot.kind == "code":
            torch.testing.assert_close(tf.logits[slot.level], model.code_logits(y[:, i - 1], slot.level),
                                       atol=1e-5, rtol=1e-4)
        elif slot.kind == "think":  # t = output at the previous slot + p[level, j]
            torch.testing.assert_close(tf.thinks[:, k], y[:, i - 1] + model.think_p[slot.think_index],
                                       atol=1e-5, rtol=1e-4)
            k += 1
    assert k == (0 if tf.thinks is None else tf.thinks.size(1))


def test_tiger_is_plain_seq2seq():
    model = tiny_model(SIZES, 3, seed=0, n_think=0).eval()
    assert [s.kind for s in model.plan] == ["bos", "code", "code", "code", "code"]
    assert model.chunks == [[0, 1, 2, 3]]  # one teacher-forced full pass
    names = [n for n, _ in model.named_parameters()]
    assert not any("think" in n or "align" in n for n in names)
    up = tiny_model(SIZES, 3, seed=0, n_think=0, placement="upfront", w_align=5.0, w_reg=3.0).eval()
    up.load_state_dict(model.state_dict())
    history, mask, target = _batch()
    with torch.no_grad():
        a, b = model(history, mask, target), up(history, mask, target)
    assert a.terms["align"] == 0 and a.terms["reg"] == 0
    torch.testing.assert_close(a.loss, b.loss)  # placement / align / reg weights are irrelevant to TIGER


def test_teacher_forcing_steps_are_one_per_thinking_vector():
    """A thinking slot starts a decoder step; the known codes after it ride along (L_sem + 1 steps, not 2L+1)."""
    step = tiny_model(SIZES, 3, seed=0, n_think=1)
    assert [[step.plan[i].kind for i in c] for c in step.chunks] == [
        ["bos"], ["think", "code"], ["think", "code"], ["think", "code"]]
    up = tiny_model(SIZES, 3, seed=0, n_think=1, placement="upfront")
    assert up.chunks == [[0], [1], [2], [3, 4, 5, 6]]
    two = tiny_model(SIZES, 3, seed=0, n_think=2)
    assert [len(c) for c in two.chunks] == [1, 1, 2, 1, 2, 1, 2]


@pytest.mark.parametrize("kw", CONFIGS, ids=IDS)
def test_every_parameter_gets_a_gradient(kw):
    model = tiny_model(SIZES, 3, seed=0, **kw)
    out = model(*_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []  # DDP without find_unused
    assert {"loss", "rec", "align", "infonce", "reg", "acc_l1", "acc_l4", "acc_sid"} <= set(out.terms)
    assert all(not v.requires_grad and v.dim() == 0 for v in out.terms.values())
    assert (out.terms["align"] > 0) == (kw["n_think"] > 0) and out.terms["infonce"] > 0
    total = sum(w * out.terms[k] for k, w in (("rec", 1.0), ("align", 1.0), ("infonce", 1.0), ("reg", 0.1)))
    torch.testing.assert_close(out.terms["loss"], total)


def test_infonce_scores_v_g_itself_and_older_models_keep_their_map():
    """L_InfoNCE anchors the v_g that L_Reg pulls t_1 towards (no map in between, S2GR.md); a model whose saved
    config predates model.infonce_proj rebuilds with the map it was trained with, so its weights still load."""
    from s2gr_ray.config import config_from_dict
    from s2gr_ray.model.losses import infonce_loss

    model = tiny_model(SIZES, 3, seed=0, n_think=1)
    assert isinstance(model.infonce_proj, torch.nn.Identity)
    assert not any(k.startswith("infonce_proj") for k in model.state_dict())
    history, mask, target = _batch()
    memory, mmask = model.encode(history, mask)
    v_g = model.aux_vector(memory, mmask)
    item_repr = model.code_emb(target.long() + model.offsets).mean(1)
    torch.testing.assert_close(model(history, mask, target).terms["infonce"],
                               infonce_loss(v_g, item_repr, target.long(), model.cfg.tau_infonce).detach())
    old = tiny_model(SIZES, 3, seed=0, n_think=1, infonce_proj=True)
    saved = {k: v for k, v in old.cfg.__dict__.items() if k != "infonce_proj"}  # a signature from before the key
    rebuilt_cfg = config_from_dict({"model": saved}).model
    assert rebuilt_cfg.infonce_proj is True
    clusters = [old.centres(l) for l in range(3)], [old.code_to_cluster(l) for l in range(3)]
    rebuilt = S2GR(rebuilt_cfg, SIZES, 3, *clusters, max_history=6)
    rebuilt.load_state_dict(old.state_dict())  # strict: the map's weight has its place


def test_switched_off_terms_build_no_modules():
    model = tiny_model(SIZES, 3, n_think=1, w_align=0.0, w_infonce=0.0)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith(("align_proj", "aux_", "infonce")) for n in names)
    out = model(*_batch())
    assert out.terms["align"] == 0 and out.terms["infonce"] == 0 and out.terms["reg"] == 0
    with pytest.raises(ValueError, match="coarse_centres"):
        S2GR(tiny_config(n_think=1), SIZES, 3)
    S2GR(tiny_config(n_think=1, w_align=0.0), SIZES, 3)  # no centres needed without L_Align


def test_arms_built_with_one_seed_share_their_common_parameters():
    """Ablations differ from the full model by what they switch off, not by a shifted random stream."""
    full = tiny_model(SIZES, 3, seed=5, n_think=1)
    arms = {"no_align": dict(n_think=1, w_align=0.0), "no_aux": dict(n_think=1, w_infonce=0.0),
            "tiger": dict(n_think=0), "n_think_2": dict(n_think=2), "upfront": dict(n_think=1, placement="upfront")}
    ref = dict(full.named_parameters())
    for arm, kw in arms.items():
        shared = set()
        for name, p in tiny_model(SIZES, 3, seed=5, **kw).named_parameters():
            if name in ref and ref[name].shape == p.shape:
                assert torch.equal(ref[name], p), (arm, name)
                shared.add(name.split(".")[0])
        assert {"code_emb", "encoder", "bos", "decoder", "heads", "level_emb", "recency_emb"} <= shared, arm
    other_seed = tiny_model(SIZES, 3, seed=6, n_think=1)
    assert not torch.equal(full.encoder[0].attn.q.weight, other_seed.encoder[0].attn.q.weight)


@pytest.mark.parametrize("kw", CONFIGS[1:], ids=IDS[1:])
def test_no_target_leakage(kw):
    model = tiny_model(SIZES, 3, seed=3, **kw).eval()
    history, mask, target = _batch()
    n = kw["n_think"]
    with torch.no_grad():
        memory, mmask = model.encode(history, mask)
        base = model.decode_teacher_forced(memory, mmask, target).thinks
        for level in range(len(SIZES)):
            changed = target.clone()
            changed[:, level:] = (changed[:, level:] + 1) % torch.tensor(SIZES[level:])
            th = model.decode_teacher_forced(memory, mmask, changed).thinks
            # every thinking vector before s_level is unchanged (stepwise: levels <= level; upfront: all)
            keep = th.size(1) if kw.get("placement") == "upfront" else (level + 1) * n
            torch.testing.assert_close(th[:, :keep], base[:, :keep], atol=0, rtol=0)
            if keep < th.size(1):
                assert not torch.allclose(th[:, keep:], base[:, keep:])
        torch.testing.assert_close(model.encode(history, mask)[0], memory)


def test_history_alignment_and_padding_garbage_do_not_matter():
    model = tiny_model(SIZES, 3, seed=0, n_think=1).eval()
    history, mask, target = _batch(b=4, t=5)
    lengths = mask.sum(1)
    right = torch.zeros_like(history)
    right_mask = torch.zeros_like(mask)
    for i, n in enumerate(lengths.tolist()):
        right[i, 5 - n:] = history[i, :n]
        right_mask[i, 5 - n:] = True
    garbage = torch.where(mask[..., None], history, torch.randint(0, 3, history.shape))
    with torch.no_grad():
        a = model(history, mask, target).loss
        b = model(right, right_mask, target).loss
        c = model(garbage, mask, target).loss
        empty = model(history, torch.zeros_like(mask), target).loss
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert torch.isfinite(empty)


def test_detach_think_blocks_gradient_through_thinking():
    history, mask, target = _batch()
    for detach in (False, True):
        model = tiny_model(SIZES, 3, seed=0, n_think=1, detach_think=detach, w_rec=0.0, w_infonce=0.0)
        model(history, mask, target).loss.backward()  # only L_Align: reaches the decoder only through t
        got = model.decoder.layers[0].ffn.wi.weight.grad
        assert (got is None or got.abs().sum() == 0) == detach


def test_signature_and_buffers():
    sem = (5, 4, 6)
    centres, maps = random_clusters(sem, num_coarse=3, latent_dim=6)
    model = S2GR(tiny_config(), SIZES, 3, centres, maps, max_history=6)
    sig = model.model_signature()
    assert sig["level_sizes"] == SIZES and sig["num_coarse"] == [3, 3, 3] and sig["latent_dim"] == 6
    state = model.state_dict()
    assert torch.equal(state["centres_0"], centres[0]) and torch.equal(state["code_to_cluster_2"], maps[2])
    assert not any(p.data_ptr() == state["centres_0"].data_ptr() for p in model.parameters())
    # the serving side: a model rebuilt from the same config and tokenizer (other weights) has the same signature
    check_signature(sig, S2GR(tiny_config(), SIZES, 3, centres, maps, max_history=6).model_signature())
    other = S2GR(tiny_config(n_think=2), SIZES, 3, centres, maps, max_history=6).model_signature()
    with pytest.raises(ValueError, match="n_think"):
        check_signature(sig, other)
    with pytest.raises(ValueError, match="history"):
        model(torch.zeros(2, 7, 4, dtype=torch.long), torch.ones(2, 7, dtype=torch.bool),
              torch.zeros(2, 4, dtype=torch.long))


def test_random_catalog_sids_are_unique():
    sids, sizes = random_catalog(200, (3, 3, 3), seed=0)
    assert len({tuple(r) for r in sids.tolist()}) == 200 and sizes[:3] == [3, 3, 3]
