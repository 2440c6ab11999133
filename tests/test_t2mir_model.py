"""T2MIR model: causality (no future token changes an earlier output), KV cache equals the
whole-sequence pass, dual-MoE wiring, contrastive loss gradients, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from streammoe.control.t2mir.model import VARIANTS, DualMoE, ICRLTransformer, ModelConfig

OBS, ACT, H = 3, 2, 5


def _model(variant: str, **kw) -> ICRLTransformer:
    token, task, _ = VARIANTS[variant]
    cfg = ModelConfig(obs_dim=OBS, act_dim=ACT, horizon=H, d_model=16, n_layers=2, n_heads=2,
                      expert_hidden=16, token_moe=token, task_moe=task, seed=0, **kw)
    return ICRLTransformer(cfg)


def _batch(b: int = 2, episodes: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = episodes * H
    return (torch.randn(b, s, OBS, generator=g), torch.rand(b, s, ACT, generator=g) * 2 - 1,
            torch.randn(b, s, generator=g), torch.arange(H).repeat(episodes).expand(b, s))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_changing_a_token_never_changes_earlier_outputs(variant: str, mode: str) -> None:
    model = _model(variant)
    model.train(mode == "train")
    obs, act, rew, t = _batch()
    tokens = model.embed_steps(obs, act, rew, t)
    n_tokens = tokens.shape[1]
    for j in (1, 7, n_tokens // 2, n_tokens - 2):
        # same dropout masks and router noise for both passes: fork the RNGs
        m2 = copy.deepcopy(model)
        torch.manual_seed(1)
        base, _ = model.run_tokens(tokens)
        changed = tokens.clone()
        changed[:, j] += 5.0 * torch.randn(changed[:, j].shape)
        torch.manual_seed(1)
        out, _ = m2.run_tokens(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-6)
        assert (out[:, j:] - base[:, j:]).abs().max() > 1e-3  # the change does reach later tokens


def test_task_representation_is_the_prefix_mean() -> None:
    model = _model("t2mir").eval()
    obs, act, rew, t = _batch()
    _, _, f = model(obs, act, rew, t)
    ffn = model.blocks[-1].ffn
    assert isinstance(ffn, DualMoE)
    # recompute the input of the last block's FFN and its running mean
    x = model.embed_steps(obs, act, rew, t)
    blk0, blk1 = model.blocks
    x, _ = blk0(x, None, 0)
    x = x + blk1.attn(blk1.ln1(x), None, 1)
    h = blk1.ln2(x)
    expected = torch.cumsum(h, 1) / torch.arange(1, h.shape[1] + 1).view(1, -1, 1)
    torch.testing.assert_close(f.task_repr, expected)


@pytest.mark.parametrize("variant", ["ad", "t2mir"])
def test_kv_cache_matches_the_whole_sequence_pass(variant: str) -> None:
    model = _model(variant).eval()
    obs, act, rew, t = _batch()
    tokens = model.embed_steps(obs, act, rew, t)
    full, f_full = model.run_tokens(tokens)
    cache = model.new_cache()
    pieces, start = [], 0
    for size in (4, 1, 1, 3, 7, tokens.shape[1] - 16):  # uneven chunks, as in evaluation
        out, _ = model.run_tokens(tokens[:, start:start + size], cache)
        pieces.append(out)
        start += size
    assert start == tokens.shape[1] and cache.length == start
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-5)


def test_dual_moe_concatenates_half_width_branches() -> None:
    model = _model("t2mir").eval()
    ffn = model.blocks[-1].ffn
    assert ffn.token.router.noisy and not ffn.task.router.noisy
    assert (ffn.token.router.n_experts, ffn.token.router.k) == (6, 2)
    assert (ffn.task.router.n_experts, ffn.task.router.k) == (8, 2)
    h = torch.randn(2, 7, 16)
    out = ffn(h, None)
    assert out.out.shape == (2, 7, 16)
    tok, _ = ffn.token(h)
    assert tok.shape == (2, 7, 8)
    torch.testing.assert_close(out.out[..., :8], tok)
    assert ((out.task.weights > 0).sum(-1) == 2).all()
    assert not isinstance(_model("ad").blocks[-1].ffn, DualMoE)
    assert _model("token_moe").blocks[-1].ffn.task is None
    assert _model("token_moe").blocks[-1].ffn.token.experts[0][-1].out_features == 16


def test_model_rejects_bad_input() -> None:
    model = _model("t2mir")
    obs, act, rew, t = _batch()
    with pytest.raises(ValueError, match="observations has 4 features"):
        model(torch.zeros(2, 10, 4), act, rew, t)
    bad = obs.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad, act, rew, t)
    with pytest.raises(ValueError, match="timesteps"):
        model(obs, act, rew, t + H)
    with pytest.raises(ValueError, match="unknown T2MIR variant"):
        from streammoe.control.t2mir.model import variant_flags

        variant_flags("dpt")
