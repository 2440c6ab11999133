"""MergeVLA's tiny VLA: shapes (vision on/off), PAD masking, no self-attention among action tokens
in the cross-attention head (and the ablation's does have it), the task gate's start, LoRA through
PEFT (only the backbone gains trainable weights; folding keeps outputs and keys), the expert-head
partition, a tiny overfit, bad inputs, chunk execution."""

from __future__ import annotations

import copy

import pytest
import torch

from streammoe.control.mergevla.model import (
    ChunkExecutor,
    TinyVLA,
    VLAConfig,
    add_lora,
    expert_head_prefixes,
    expert_trainable_parameters,
    fold_lora,
    has_lora,
    shared_block_value_projection,
)

IMG, D, LAYERS, CHUNK, VOCAB = 16, 16, 3, 3, 32


def _cfg(**kw) -> VLAConfig:
    base = dict(image_size=IMG, patch_size=8, state_dim=6, vocab_size=VOCAB, max_instruction_len=8,
                d_model=D, n_layers=LAYERS, n_heads=2, ffn_mult=2, chunk=CHUNK)
    base.update(kw)
    return VLAConfig(**base)


def _obs(b: int = 3, vision: bool = True, seed: int = 0, length: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ins = torch.randint(1, VOCAB, (b, length), generator=g)
    ins[:, 4:] = 0  # trailing PAD
    ins[0, 2:] = 0
    obs = {"proprio": torch.randn(b, 4, generator=g), "instruction": ins}
    if vision:
        obs["image"] = torch.randint(0, 256, (b, IMG, IMG, 3), generator=g, dtype=torch.uint8)
    else:
        obs["state"] = torch.randn(b, 6, generator=g)
    return obs


@pytest.mark.parametrize("vision", [True, False])
@pytest.mark.parametrize("head", ["cross_attention", "self_attention"])
def test_shapes_and_range(vision: bool, head: str) -> None:
    model = TinyVLA(_cfg(vision=vision, action_head=head))
    obs = _obs(vision=vision)
    enc = model.encode(obs)
    t = (4 if vision else 1) + 6 + 1
    assert len(enc.hidden) == LAYERS and all(h.shape == (3, t, D) for h in enc.hidden)
    out = model(obs)
    assert out.shape == (3, CHUNK, 4) and out.abs().max() <= 1
    assert model.hidden_into_last_shared_block(obs).shape == (3, t + 1, D)
    assert model.memory_valid_mask(obs).shape == (3, t + 1)
    assert shared_block_value_projection(model).shape == (D, D)
    loss = model.action_loss(obs, torch.zeros(3, CHUNK, 4))
    loss.backward()  # every parameter that the action path uses gets a gradient
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    assert unused == {n for n, _ in model.named_parameters() if n.startswith(("aux.", "backbone.norm."))}


def test_pad_positions_are_masked_everywhere() -> None:
    model = TinyVLA(_cfg()).eval()
    obs = _obs()
    base = model(obs)
    aux = model.auxiliary_predictions(obs)
    # more trailing PAD columns: same valid tokens, same outputs
    longer = dict(obs, instruction=torch.cat([obs["instruction"], torch.zeros(3, 2, dtype=torch.long)], 1))
    torch.testing.assert_close(model(longer), base, rtol=0, atol=1e-6)
    # what sits at PAD positions (the PAD embedding row) cannot matter: nobody attends to it
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        m2.embed.word.weight[0] += 3.0
    torch.testing.assert_close(m2(obs), base, rtol=0, atol=1e-6)
    for k, v in m2.auxiliary_predictions(obs).items():
        torch.testing.assert_close(v, aux[k], rtol=0, atol=1e-6)
    hid = model.hidden_into_last_shared_block(obs)
    valid = model.memory_valid_mask(obs)
    assert (hid[~valid] == 0).all() and (hid[valid].abs().sum(-1) > 0).all()
    # and the check is not vacuous: a real token there does change the outputs
    changed = dict(obs, instruction=obs["instruction"].clone())
    changed["instruction"][:, -1] = 5
    assert (model(changed) - base).abs().max() > 1e-4


def _perturb_query(model: TinyVLA, j: int) -> TinyVLA:
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        # a random direction: a constant shift would vanish in the LayerNorms
        m2.action_expert.queries[j] += torch.randn(D, generator=torch.Generator().manual_seed(j))
    return m2


def test_action_tokens_do_not_attend_to_each_other() -> None:
    obs = _obs()
    model = TinyVLA(_cfg()).eval()
    base, out = model(obs), _perturb_query(model, 1)(obs)
    others = [0, 2]
    torch.testing.assert_close(out[:, others], base[:, others], rtol=0, atol=1e-6)
    assert (out[:, 1] - base[:, 1]).abs().max() > 1e-3
    # the same test on the self-attention ablation fails, as it should
    sa = TinyVLA(_cfg(action_head="self_attention")).eval()
    assert (_perturb_query(sa, 1)(obs)[:, others] - sa(obs)[:, others]).abs().max() > 1e-4


def test_task_gate_starts_at_sigmoid_of_its_parameter() -> None:
    obs = _obs()
    model = TinyVLA(_cfg()).eval()
    for block in model.action_expert.blocks:
        gate = block.task_gate.detach()
        assert float(gate) == 0.0 and float(torch.sigmoid(gate)) == 0.5
    # the stream is live at 0.5: its weights change the actions
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        m2.action_expert.blocks[0].task_attn.v_proj.weight.mul_(3.0)
    assert (m2(obs) - model(obs)).abs().max() > 1e-4
    # closed gate (large negative parameter): the stream's weights no longer matter
    closed = TinyVLA(_cfg(task_gate_init=-30.0)).eval()
    m3 = copy.deepcopy(closed)
    with torch.no_grad():
        for block in m3.action_expert.blocks:
            block.task_attn.v_proj.weight.mul_(3.0)
    torch.testing.assert_close(m3(obs), closed(obs), rtol=0, atol=1e-6)
    off = TinyVLA(_cfg(task_stream=False))
    assert not any("task" in n for n, _ in off.named_parameters())


def test_expert_head_prefixes_partition_the_action_expert() -> None:
    model = TinyVLA(_cfg())
    head, shared = model.expert_head_prefixes(), model.shared_action_expert_prefixes()
    assert head == expert_head_prefixes(model.cfg) == expert_head_prefixes(model)
    keys = [k for k in model.state_dict() if k.startswith("action_expert.")]
    in_head = {k for k in keys if k.startswith(head)}
    in_shared = {k for k in keys if k.startswith(shared)}
    assert in_head.isdisjoint(in_shared) and in_head | in_shared == set(keys)
    assert {k.split(".")[2] for k in in_head if k.startswith("action_expert.blocks.")} == {str(LAYERS - 1)}
    assert {k.split(".")[2] for k in in_shared if k.startswith("action_expert.blocks.")} == {
        str(i) for i in range(LAYERS - 1)}
    assert "action_expert.out.weight" in in_head and "action_expert.norm.weight" in in_head
    assert model.value_projection_key() in in_shared
    assert torch.equal(model.state_dict()[model.value_projection_key()],
                       model.shared_block_value_projection())
    assert not model.is_expert_head_key("backbone.layers.0.attn.q_proj.weight")


def test_lora_trains_backbone_adapters_and_folds_exactly() -> None:
    pytest.importorskip("peft")
    base = TinyVLA(_cfg()).eval()
    obs = _obs()
    model = add_lora(copy.deepcopy(base), rank=2, alpha=4.0)
    assert has_lora(model) and not has_lora(base)
    torch.testing.assert_close(model(obs), base(obs), rtol=0, atol=1e-6)  # lora_B starts at 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(n.startswith("backbone.layers.") for n in lora)
    # every backbone linear wrapped: 6 per layer (q, k, v, out, fc1, fc2), A and B each
    assert len(lora) == LAYERS * 6 * 2
    assert trainable - lora == {n for n, _ in model.named_parameters() if n.startswith("action_expert.")}
    assert {id(p) for p in expert_trainable_parameters(model)} == {
        id(p) for n, p in model.named_parameters() if n in trainable}
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model, rank=2)
    with torch.no_grad():  # give the adapters something to fold
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    with_lora = model(obs)
    assert (with_lora - base(obs)).abs().max() > 1e-4
    state = fold_lora(model)
    assert set(state) == set(base.state_dict()) and not has_lora(model)
    torch.testing.assert_close(model(obs), with_lora, rtol=0, atol=1e-5)
    plain = TinyVLA(_cfg()).eval()
    plain.load_state_dict(state)
    torch.testing.assert_close(plain(obs), with_lora, rtol=0, atol=1e-5)
    # only the backbone's linear weights moved (LoRA has no bias: bias="none")
    changed = {k for k in state if not torch.equal(state[k], base.state_dict()[k])}
    assert changed and all(k.startswith("backbone.layers.") and k.endswith(".weight") for k in changed)
    with pytest.raises(ValueError, match="no LoRA layers"):
        fold_lora(model)
    with pytest.raises(ValueError, match="unknown LoRA target"):
        add_lora(model, target="vision")


def test_tiny_overfit() -> None:
    torch.manual_seed(0)
    model = TinyVLA(_cfg(n_layers=2, seed=1))
    obs = _obs(b=8, seed=3)
    target = torch.rand(8, CHUNK, 4) * 1.6 - 0.8
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        loss = model.action_loss(obs, target)
        loss.backward()
        opt.step()
    assert model.action_loss(obs, target).item() < 0.05
    aux_t = {"hand_pos": obs["proprio"][:, :3]}
    a0 = model.auxiliary_loss(obs, aux_t).item()
    aopt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        aopt.zero_grad()
        model.auxiliary_loss(obs, aux_t).backward()
        aopt.step()
    assert model.auxiliary_loss(obs, aux_t).item() < 0.2 * a0


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda o: o.update(image=torch.zeros(3, 32, 32, 3, dtype=torch.uint8)), ValueError, "32x32.*16x16.*image_size"),
        (lambda o: o.update(image=o["image"].float()), TypeError, "uint8"),
        (lambda o: o.update(image=o["image"][0]), ValueError, r"\(B, H, W, 3\)"),
        (lambda o: o["proprio"].__setitem__((0, 1), float("nan")), ValueError, "proprio.*NaN"),
        (lambda o: o.update(proprio=o["proprio"][:, :3]), ValueError, "proprio_dim"),
        (lambda o: o.update(instruction=o["instruction"].int()), TypeError, "int64"),
        (lambda o: o.update(instruction=torch.ones(3, 9, dtype=torch.long)), ValueError, "max_instruction_len"),
        (lambda o: o.update(instruction=o["instruction"] + VOCAB), ValueError, "vocab_size"),
        (lambda o: o.pop("image"), ValueError, "lacks"),
        (lambda o: o.update(proprio=o["proprio"][:2]), ValueError, "batch size"),
    ],
)
def test_bad_inputs_are_refused(change, error, match) -> None:
    model = TinyVLA(_cfg())
    obs = _obs()
    change(obs)
    with pytest.raises(error, match=match):
        model(obs)


def test_keypoint_token_follows_a_bright_spot() -> None:
    """``keypoints=K``: one more observation token, the embedding of K spatial-softmax keypoints
    that move with what the image shows; state observations and K=0 keep their keys."""
    model = TinyVLA(_cfg(keypoints=4))
    obs = _obs()
    assert model.encode(obs).hidden[0].shape == (3, 4 + 1 + 6 + 1, D)
    assert model.cfg.n_obs_tokens == 5 and model(obs).shape == (3, CHUNK, 4)
    enc = model.embed.vision
    with torch.no_grad():  # keypoint maps = the red channel through the first conv, sharpened
        for conv in (enc.conv1, enc.kp_conv1, enc.kp_conv2):
            conv.weight.zero_()
            conv.bias.zero_()
        enc.conv1.weight[:, 0, 1, 1] = 1.0       # (x - 0.5): dark -0.5, red +0.5
        enc.kp_conv1.weight[:, :, 1, 1] = 1.0 / enc.conv1.out_channels
        enc.kp_conv2.weight[:, :, 1, 1] = 200.0 / enc.kp_conv1.out_channels
    img = torch.zeros(2, IMG, IMG, 3, dtype=torch.uint8)
    img[0, 2:4, 12:14, 0] = 255  # top right
    img[1, 12:14, 2:4, 0] = 255  # bottom left
    h = torch.nn.functional.gelu(enc.conv1(img.permute(0, 3, 1, 2).float() / 255.0 - 0.5))
    xy = enc.keypoints(h)
    assert xy.shape == (2, 8) and xy.abs().max() <= 1
    assert (xy[0, :4] > 0.5).all() and (xy[0, 4:] < -0.5).all()  # x right, y up
    assert (xy[1, :4] < -0.5).all() and (xy[1, 4:] > 0.5).all()
    state = TinyVLA(_cfg(vision=False, keypoints=4))
    assert set(state.state_dict()) == set(TinyVLA(_cfg(vision=False)).state_dict())
    assert not any("kp_" in k for k in TinyVLA(_cfg()).state_dict())


def test_bad_config_and_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="image_size=60 is not a multiple"):
        _cfg(image_size=60)
    with pytest.raises(ValueError, match="n_layers"):
        _cfg(n_layers=1)
    with pytest.raises(ValueError, match="action_head"):
        _cfg(action_head="mlp")
    with pytest.raises(ValueError, match="keypoints must be an integer >= 0"):
        _cfg(keypoints=-1)
    model = TinyVLA(_cfg(vision=False))
    with pytest.raises(ValueError, match="vision=False"):
        model(_obs())
    obs = _obs(vision=False)
    with pytest.raises(ValueError, match=r"action_chunk must be \(B, 3, 4\)"):
        model.action_loss(obs, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"leaves \[-1, 1\]"):
        model.action_loss(obs, torch.full((3, CHUNK, 4), 2.0))
    with pytest.raises(ValueError, match="do not match the heads"):
        model.auxiliary_loss(obs, {"elbow": torch.zeros(3, 3)})


def test_chunk_executor_modes() -> None:
    calls = []

    def policy(obs):
        calls.append(obs)
        return torch.full((2, CHUNK, 4), float(len(calls)))

    ex = ChunkExecutor(CHUNK)
    acts = [float(ex.step(t, policy)[0, 0]) for t in range(7)]
    assert acts == [1, 1, 1, 2, 2, 2, 3] and calls == [0, 3, 6]
    calls.clear()
    ens = ChunkExecutor(CHUNK, mode="ensemble", decay=0.0)
    acts = [float(ens.step(t, policy)[0, 0]) for t in range(5)]
    assert acts == pytest.approx([1, 1.5, 2, 3, 4])  # equal weights over the last <= 3 chunks
    ens.reset()
    with pytest.raises(ValueError, match=r"\(B, 3, action_dim\)"):
        ens.step(0, lambda o: torch.zeros(2, 2, 4))
    model = TinyVLA(_cfg())
    a = ChunkExecutor(CHUNK, replan_every=2).step(_obs(), model.act)
    assert a.shape == (3, 4) and model.training  # act restores the mode


def test_eva_components_are_the_principal_directions_of_each_layers_inputs() -> None:
    pytest.importorskip("peft")
    from streammoe.control.mergevla.model import eva_components

    base = TinyVLA(_cfg(vision=False)).eval()
    batches = [_obs(b=32, vision=False, seed=s) for s in range(4)]
    before = copy.deepcopy(base.state_dict())
    comps = eva_components(base, batches, rank=2)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # base untouched
    wrapped = {f"backbone.layers.{i}.{n}" for i in range(LAYERS)
               for n in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "ffn.fc1", "ffn.fc2")}
    assert set(comps) == wrapped and all(tuple(c.shape) == (2, D) or "fc2" in k for k, c in comps.items())
    # layer 0's q/k/v read LayerNorm(tokens): EVA's rows span the top-2 principal subspace of
    # those inputs (PAD rows left out)
    x = torch.cat([base.hidden_into_backbone_layer(o, 0)[base.token_valid_mask(o)] for o in batches])
    top = torch.linalg.svd(x - x.mean(0), full_matrices=False)[2][:2]
    eva = comps["backbone.layers.0.attn.v_proj"]
    overlap = torch.linalg.svdvals(eva @ top.T)  # cosines of the principal angles
    assert overlap.min() > 0.95, overlap
    # add_lora starts A there (B at 0, so the outputs are unchanged)
    model = add_lora(copy.deepcopy(base), rank=2, eva=comps)
    torch.testing.assert_close(model.backbone.layers[0].attn.v_proj.lora_A["default"].weight, eva)
    torch.testing.assert_close(model(batches[0]), base(batches[0]), rtol=0, atol=1e-6)
    # components for some layers only: the others keep PEFT's default (random) A
    layer0 = {k: v for k, v in comps.items() if k.startswith("backbone.layers.0.")}
    model = add_lora(copy.deepcopy(base), rank=2, eva=layer0)
    torch.testing.assert_close(model.backbone.layers[0].ffn.fc1.lora_A["default"].weight,
                               comps["backbone.layers.0.ffn.fc1"])
    a1 = model.backbone.layers[1].attn.v_proj.lora_A["default"].weight
    assert not torch.allclose(a1, comps["backbone.layers.1.attn.v_proj"], atol=1e-3)


@pytest.mark.parametrize("change, match", [
    (lambda c: c.__setitem__("backbone.layers.9.ffn.fc1", torch.zeros(2, D)), "does not wrap"),
    (lambda c: c.__setitem__("backbone.layers.0.attn.q_proj", torch.zeros(3, D)), "must be a finite"),
    (lambda c: c["backbone.layers.0.attn.q_proj"].fill_(float("nan")), "must be a finite"),
])
def test_bad_eva_components_are_refused_before_the_model_changes(change, match) -> None:
    pytest.importorskip("peft")
    from streammoe.control.mergevla.model import eva_components

    base = TinyVLA(_cfg(vision=False)).eval()
    comps = eva_components(base, [_obs(b=32, vision=False)], rank=2)
    change(comps)
    with pytest.raises(ValueError, match=match):
        add_lora(base, rank=2, eva=comps)
    assert not has_lora(base)
    with pytest.raises(ValueError, match="at least one batch"):
        eva_components(base, [], rank=2)
    with pytest.raises(RuntimeError, match="did not converge"):
        eva_components(base, [_obs(b=32, vision=False, seed=s) for s in range(3)], rank=2, max_batches=2)


def test_hidden_into_backbone_layer_is_what_the_layer_reads() -> None:
    model = TinyVLA(_cfg()).eval()
    obs = _obs()
    seen = {}
    hook = model.backbone.layers[1].attn.v_proj.register_forward_hook(
        lambda m, i, o: seen.__setitem__("x", i[0].detach()))
    model(obs)
    hook.remove()
    valid = model.token_valid_mask(obs)
    h = model.hidden_into_backbone_layer(obs, 1)
    torch.testing.assert_close(h[valid], seen["x"][valid])
    assert (h[~valid] == 0).all() and (~valid).any()
    assert model.backbone_value_key(1) == "backbone.layers.1.attn.v_proj.weight"
    with pytest.raises(ValueError, match="layer must be an index"):
        model.hidden_into_backbone_layer(obs, LAYERS)
