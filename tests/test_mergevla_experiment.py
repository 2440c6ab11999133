"""MergeVLA's pipeline: the smoke experiment end to end, stage caching (a re-run trains nothing, a
changed setting re-trains only what depends on it), bad stage files, the evaluation's policies and
the image augmentation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from streammoe import checkpoint
from streammoe.cli import run_experiment
from streammoe.config import ConfigError
from streammoe.control.mergevla.config import variant_parts
from streammoe.control.mergevla.evaluate import SuitePolicy
from streammoe.control.mergevla.merging import load_masks
from streammoe.control.mergevla.model import TinyVLA, VLAConfig, lora_module_names
from streammoe.control.mergevla.train import STAGE_KIND, STAGE_VERSION, cached_stage, random_shift
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run (and its stage cache), shared by the tests below."""
    root = tmp_path_factory.mktemp("mergevla")
    cache = root / "cache"
    cfg = compose_config(["experiment=mergevla_smoke", f"mergevla.data_dir={cache}"])
    metrics = run_experiment(cfg, root / "run")
    return root, cache, metrics


def _stage_files(cache: Path) -> dict[str, float]:
    return {p.name: os.stat(p).st_mtime_ns for p in cache.glob("*.safetensors")}


def test_smoke_pipeline_writes_every_output(smoke):
    root, cache, metrics = smoke
    run = root / "run"
    for name in ("config_resolved.yaml", "metrics.json", "metrics.csv", "results.json", "success.png",
                 "router_confusion.png", "videos/drawer.mp4", "videos/button.mp4"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    details = metrics["details"]
    assert set(details["variants"]) == {"experts/oracle", "naive_full/single", "ties+mask/router",
                                        "ties+mask+refit/router", "average/oracle",
                                        "self_attention:naive_full/single"}
    assert all(rate >= 0.95 for rate in details["expert_success"].values())
    routed = details["variants"]["ties+mask/router"]
    assert 0.0 <= routed["router_accuracy"] <= 1.0 and len(routed["router_confusion"]) == 2
    assert sum(map(sum, routed["router_confusion"])) == routed["episodes"]
    stats = details["mask_stats"]["cross_attention:ties"]
    assert 0.0 <= stats["selfish_fraction"] <= 1.0
    # the mask file loads against the model it was made for, one mask per suite
    from streammoe_envs.metaworld import VOCAB

    model = TinyVLA(VLAConfig(vision=False, state_dim=17, vocab_size=len(VOCAB), max_instruction_len=12,
                              d_model=16, n_heads=2, n_layers=2))
    masks = load_masks(run / "masks_cross_attention_ties.safetensors", like=model.state_dict(), n_tasks=2)
    assert masks.tasks == ("drawer", "button")
    # every episode is one held-out variation of a suite's task
    eps = json.loads((run / "results.json").read_text())["episodes"]["experts/oracle"]
    assert {e["task"] for e in eps} == {"drawer-open-v3", "drawer-close-v3", "button-press-v3",
                                        "button-press-topdown-v3", "button-press-topdown-wall-v3"}
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("stage,seed,step,loss,success,seconds")
    assert any(r.startswith("expert/cross_attention/drawer") for r in rows)
    assert any(r.startswith("eval/ties+mask/router") for r in rows)


def test_a_rerun_trains_nothing_and_gives_the_same_results(smoke, tmp_path):
    root, cache, metrics = smoke
    before = _stage_files(cache)
    cfg = compose_config(["experiment=mergevla_smoke", f"mergevla.data_dir={cache}",
                          "mergevla.eval.video=false"])
    again = run_experiment(cfg, tmp_path / "again")
    assert _stage_files(cache) == before  # no stage written again
    for key, value in metrics.items():
        if key.startswith(("success/", "router_accuracy/")):
            assert again[key] == value, key
    # the loss histories come from the stage files: the same rows as when they were trained
    def training_rows(run: Path) -> list[str]:
        return [r for r in (run / "metrics.csv").read_text().splitlines() if r.startswith(("base/", "expert/"))]

    first = training_rows(root / "run")
    assert first and training_rows(tmp_path / "again") == first


def test_worker_processes_give_the_same_stages_and_results(smoke, tmp_path):
    """``mergevla.jobs=2``: demonstrations, experts and evaluations in spawned workers (one torch
    thread each) write the stage files one process would, with the same results and videos."""
    root, cache, metrics = smoke
    cfg = compose_config(["experiment=mergevla_smoke", f"mergevla.data_dir={tmp_path / 'cache'}",
                          "mergevla.jobs=2"])
    par = run_experiment(cfg, tmp_path / "run")
    assert set(_stage_files(tmp_path / "cache")) == set(_stage_files(cache))  # same fingerprints
    for key, value in metrics.items():
        if key.startswith(("success/", "router_accuracy/")):
            assert par[key] == value, key
    for name in _stage_files(cache):
        if name.startswith("expert_"):
            a = checkpoint.load(cache / name, kind=STAGE_KIND, version=STAGE_VERSION).state["weights"]
            b = checkpoint.load(tmp_path / "cache" / name, kind=STAGE_KIND, version=STAGE_VERSION).state["weights"]
            for k in a:  # (1 thread vs several: float sums in another order)
                torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    for name in ("videos/drawer.mp4", "videos/button.mp4"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert any(r.startswith("expert/cross_attention/button") for r in rows)  # trained by a worker
    assert any(r.startswith("eval/ties+mask+refit/router") for r in rows)


def test_a_changed_expert_setting_retrains_the_experts_but_not_the_base(smoke, tmp_path):
    root, cache, _ = smoke
    before = _stage_files(cache)
    cfg = compose_config(["experiment=mergevla_smoke", f"mergevla.data_dir={cache}",
                          "mergevla.expert.steps=2", "mergevla.eval.variants=[experts/oracle]",
                          "mergevla.eval.ablation_variants=[]", "mergevla.eval.video=false"])
    run_experiment(cfg, tmp_path / "changed")
    after = _stage_files(cache)
    new = sorted(set(after) - set(before))
    assert all(name.startswith(("expert_", "eval_")) for name in new), new
    assert sum(name.startswith("expert_") for name in new) == 2  # one per suite
    assert {k: v for k, v in after.items() if k in before} == before  # the base (and the rest) kept


def test_a_corrupt_stage_file_is_refused_with_its_path(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"weights": {"w": torch.ones(3)}}

    state, fp, cached = cached_stage(tmp_path, "demo", {"a": 1}, ["x"], build)
    assert not cached and calls == [1]
    state2, fp2, cached2 = cached_stage(tmp_path, "demo", {"a": 1}, ["x"], build)
    assert cached2 and fp2 == fp and calls == [1] and torch.equal(state2["weights"]["w"], torch.ones(3))
    _, fp3, cached3 = cached_stage(tmp_path, "demo", {"a": 2}, ["x"], build)  # other settings: rebuilt
    assert not cached3 and fp3 != fp and calls == [1, 1]
    path = next(tmp_path.glob(f"demo_{fp[:16]}.safetensors"))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=str(path.name)):
        cached_stage(tmp_path, "demo", {"a": 1}, ["x"], build)
    assert calls == [1, 1]  # refused, not silently rebuilt


def test_a_pickle_in_place_of_a_stage_file_never_runs(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    from streammoe.control.mergevla.train import stage_fingerprint

    fp = stage_fingerprint("demo", {"a": 1}, [])
    (tmp_path / f"demo_{fp[:16]}.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(checkpoint.CheckpointError, match="pickle"):
        cached_stage(tmp_path, "demo", {"a": 1}, [], lambda: {})
    assert not (tmp_path / "pwned").exists()


def test_variant_names_are_checked():
    assert variant_parts("task_arithmetic/oracle") == ("task_arithmetic", False, "oracle", False)
    assert variant_parts("ties+mask+refit/router") == ("ties", True, "router", True)
    for bad in ("ties", "ties/anywhere", "experts/router", "experts+mask/oracle", "naive_full/router",
                "fisher+mask/router", "ties+refit/router", "ties+refit+mask/router", "experts+mask+refit/oracle"):
        with pytest.raises(ConfigError, match="variant"):
            variant_parts(bad)


def test_suite_policy_checks_its_models_and_router():
    m = TinyVLA(VLAConfig(vision=False, state_dim=17, d_model=16, n_heads=2, n_layers=2))
    with pytest.raises(ValueError, match="one per suite"):
        SuitePolicy([m], ("drawer", "button"), "oracle")
    with pytest.raises(ValueError, match="one model"):
        SuitePolicy([m, m], ("drawer", "button"), "single")
    with pytest.raises(ValueError, match="TestTimeTaskRouter"):
        SuitePolicy([m, m], ("drawer", "button"), "router")
    with pytest.raises(ValueError, match="route"):
        SuitePolicy([m, m], ("drawer", "button"), "psychic")


def test_random_shift_moves_whole_images_within_the_bound():
    gen = torch.Generator().manual_seed(0)
    img = torch.zeros(16, 12, 12, 3, dtype=torch.uint8)
    img[:, 6, 6] = 255  # one bright pixel in the middle
    out = random_shift(img, 2, gen)
    assert out.shape == img.shape and out.dtype == torch.uint8
    for i in range(16):
        ys, xs = np.nonzero(out[i, :, :, 0].numpy())
        assert len(ys) == 1 and abs(ys[0] - 6) <= 2 and abs(xs[0] - 6) <= 2
    assert len({tuple(np.argwhere(o[:, :, 0].numpy())[0]) for o in out}) > 1  # not one shift for all
    assert torch.equal(random_shift(img, 0, gen), img)


def test_the_state_preset_is_the_image_pipeline_without_its_image_settings():
    """``experiment=mergevla_state``: the object state with the settings its results were made
    with, so its stage fingerprints are those of before the image defaults changed."""
    from streammoe.control.mergevla.config import validated

    image, state = (compose_config([f"experiment={name}"]) for name in ("mergevla", "mergevla_state"))
    validated(state)
    assert image.mergevla.vision and image.mergevla.expert.train_vision and image.mergevla.model.keypoints > 0
    assert not state.mergevla.vision and not state.mergevla.expert.train_vision
    assert state.mergevla.model.keypoints == 0 and state.mergevla.expert.steps == 6000
    assert image.mergevla.expert.aux_weight > 0 and state.mergevla.expert.aux_weight == 0
    differ = {k for k in image.mergevla if image.mergevla[k] != state.mergevla[k]}
    assert differ == {"vision", "model", "expert", "merge", "router"}
    before = compose_config(["experiment=mergevla", "mergevla.vision=false", "mergevla.model.keypoints=0",
                             "mergevla.expert.steps=6000", "mergevla.expert.train_vision=false",
                             "mergevla.expert.aux_weight=0", "mergevla.merge.refit_vision=false",
                             "mergevla.router.discriminative=0"])
    assert OmegaConf.to_container(before.mergevla) == OmegaConf.to_container(state.mergevla)


def test_the_smoke_config_is_the_real_one_with_sizes():
    real, smoke_cfg = compose_config(["experiment=mergevla"]), compose_config(["experiment=mergevla_smoke"])
    assert OmegaConf.select(real, "mergevla.vision") is True and smoke_cfg.mergevla.vision is False
    assert real.mergevla.eval.episodes_per_task >= 20  # the issue's >= 20 episodes per task


def _tiny_suite(n: int = 16):
    from streammoe.control.mergevla.data import SuiteData

    rng = np.random.default_rng(0)
    return SuiteData(suite="drawer", tasks=("drawer-open-v3",),
                     obs={"state": rng.normal(size=(n, 17)).astype(np.float32),
                          "proprio": rng.normal(size=(n, 4)).astype(np.float32),
                          "instruction": np.tile(np.array([[7, 1, 15] + [0] * 9]), (n, 1))},
                     actions=rng.uniform(-1, 1, (n, 4, 4)).astype(np.float32),
                     action_valid=np.ones((n, 4), bool), task_index=np.zeros(n, np.int64),
                     episode_index=np.zeros(n, np.int64), step=np.arange(n))


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_expert_shared_blocks_move_only_with_their_learning_rate(scale):
    from streammoe.control.mergevla.train import TrainSettings, train_expert

    cfg = VLAConfig(vision=False, state_dim=17, d_model=16, n_heads=2, n_layers=2)
    base = TinyVLA(cfg).state_dict()
    settings = TrainSettings(steps=3, batch_size=4, lr=1e-2, weight_decay=0.0, grad_clip=1.0, shift=0,
                             log_every=1)
    expert, history = train_expert(cfg, base, _tiny_suite(), settings, lora_rank=2, lora_alpha=4.0,
                                   lora_target="backbone", shared_lr_scale=scale, seed=0,
                                   device=torch.device("cpu"))
    shared = TinyVLA(cfg).shared_action_expert_prefixes()
    moved = {k for k in base if not torch.equal(base[k], expert[k])}
    assert any(k.startswith(TinyVLA(cfg).expert_head_prefixes()) for k in moved)  # the head learns
    assert any(k.startswith("backbone.") for k in moved)  # folded LoRA changed the backbone
    assert any(k.startswith(shared) for k in moved) == (scale > 0)
    assert len(history) == 3
    with pytest.raises(ValueError, match="shared_lr_scale"):
        train_expert(cfg, base, _tiny_suite(), settings, lora_rank=2, lora_alpha=4.0,
                     lora_target="backbone", shared_lr_scale=1.5, seed=0, device=torch.device("cpu"))


@pytest.mark.parametrize("train_vision", [False, True])
def test_expert_trains_the_vision_encoder_only_when_asked(train_vision):
    from streammoe.control.mergevla.train import TrainSettings, train_expert

    cfg = VLAConfig(vision=True, image_size=16, patch_size=8, d_model=16, n_heads=2, n_layers=2)
    base = TinyVLA(cfg).state_dict()
    data = _tiny_suite()
    data.obs = {**{k: v for k, v in data.obs.items() if k != "state"},
                "image": np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)}
    settings = TrainSettings(steps=3, batch_size=4, lr=1e-2, weight_decay=0.0, grad_clip=1.0, shift=0,
                             log_every=1)
    expert, _ = train_expert(cfg, base, data, settings, lora_rank=2, lora_alpha=4.0, lora_target="backbone",
                             shared_lr_scale=0.0, train_vision=train_vision, seed=0, device=torch.device("cpu"))
    vision = [k for k in base if k.startswith("embed.vision.")]
    assert vision and set(expert) == set(base)
    assert {k for k in vision if not torch.equal(base[k], expert[k])} == (set(vision) if train_vision else set())
    assert any(not torch.equal(base[k], expert[k]) for k in base if k.startswith("backbone."))
    if train_vision:  # merging takes the encoder's change like any other key
        from streammoe.control.mergevla.merging import task_vectors

        assert all(task_vectors(base, [expert])[0][k].abs().sum() > 0 for k in vision)


def test_expert_position_loss_moves_the_encoder_and_returns_the_base_heads():
    """``expert.aux_weight``: the position loss trains the encoder (another change than the action
    loss alone gives) and the heads, which come back as the base's; negative weights are refused,
    in the config and in train_expert, and 0 stays out of the expert's fingerprint."""
    from streammoe.control.mergevla.config import validated
    from streammoe.control.mergevla.train import TrainSettings, train_expert

    cfg = VLAConfig(vision=True, image_size=16, patch_size=8, d_model=16, n_heads=2, n_layers=2)
    base = TinyVLA(cfg).state_dict()
    data = _tiny_suite()
    data.obs["image"] = np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    settings = TrainSettings(steps=3, batch_size=4, lr=1e-2, weight_decay=0.0, grad_clip=1.0, shift=0,
                             log_every=1)

    def expert(weight: float):
        return train_expert(cfg, base, data, settings, lora_rank=2, lora_alpha=4.0, lora_target="backbone",
                            shared_lr_scale=0.0, train_vision=True, aux_weight=weight, seed=0,
                            device=torch.device("cpu"))

    (plain, plain_hist), (aux, aux_hist) = expert(0.0), expert(10.0)
    heads = [k for k in base if k.startswith(TinyVLA(cfg).auxiliary_head_prefix())]
    assert heads and all(torch.equal(aux[k], base[k]) for k in heads)
    vision = [k for k in base if k.startswith("embed.vision.")]
    assert any(not torch.allclose(aux[k], plain[k]) for k in vision)
    assert aux_hist[0]["loss"] > plain_hist[0]["loss"]  # the same first batch, plus the position loss
    with pytest.raises(ValueError, match="aux_weight must be a finite number >= 0"):
        expert(-1.0)
    with pytest.raises(ConfigError, match="aux_weight"):
        validated(compose_config(["experiment=mergevla", "mergevla.expert.aux_weight=-0.5"]))


def test_train_vision_is_refused_without_images():
    from streammoe.control.mergevla.config import validated
    from streammoe.control.mergevla.train import TrainSettings, train_expert

    with pytest.raises(ConfigError, match=r"expert\.train_vision=true needs images.*train_vision=false"):
        validated(compose_config(["experiment=mergevla", "mergevla.vision=false", "mergevla.expert.train_vision=true"]))
    with pytest.raises(ConfigError, match="experiment=mergevla_state"):  # the image defaults train it
        validated(compose_config(["experiment=mergevla", "mergevla.vision=false"]))
    validated(compose_config(["experiment=mergevla", "mergevla.expert.train_vision=true"]))
    cfg = VLAConfig(vision=False, state_dim=17, d_model=16, n_heads=2, n_layers=2)
    settings = TrainSettings(steps=1, batch_size=4, lr=1e-2, weight_decay=0.0, grad_clip=1.0, shift=0,
                             log_every=1)
    with pytest.raises(ValueError, match="train_vision needs an image model"):
        train_expert(cfg, TinyVLA(cfg).state_dict(), _tiny_suite(), settings, lora_rank=2, lora_alpha=4.0,
                     lora_target="backbone", train_vision=True, seed=0, device=torch.device("cpu"))


def test_bench_script_runs_the_smoke_grid_and_writes_its_table(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "bench_mergevla.py"), "--experiment", "mergevla_smoke",
         "--seeds", "0", "1", "--variants", "experts/oracle", "ties+mask/router", "--ablation",
         "--out", str(out), "--", f"mergevla.data_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    bench = json.loads((out / "bench.json").read_text())
    assert bench["seeds"] == [0, 1] and set(bench["table"]) == {"experts/oracle", "ties+mask/router"}
    row = bench["table"]["ties+mask/router"]
    mean, sd, lo, hi = row["success"]
    assert 0.0 <= lo <= mean <= hi <= 1.0 and sd >= 0.0 and len(row["per_seed"]) == 2
    assert np.sum(row["router_confusion"]) == sum(r["variants"]["ties+mask/router"]["episodes"]
                                                  for r in bench["per_seed"].values())
    for name in ("bench.md", "success.png", "router_confusion.png"):
        assert (out / name).stat().st_size > 0
    assert "| experts/oracle |" in (out / "bench.md").read_text()
    experts = [r["variants"]["experts/oracle"]["success"] for r in bench["per_seed"].values()]
    if all(experts):  # the share of the experts' success, per seed and pooled over episodes
        merged = [r["variants"]["ties+mask/router"]["success"] for r in bench["per_seed"].values()]
        np.testing.assert_allclose(row["of_experts"]["per_seed"], np.divide(merged, experts))
        pooled, lo, hi = row["of_experts"]["pooled"]
        assert lo <= pooled <= hi
    else:
        assert "of_experts" not in row


def test_bench_ratio_to_the_experts_pairs_episodes_within_seeds():
    bench = _script("bench_mergevla")

    def seed(expert, merged):
        keys = [f"reach-v3/{i}" for i in range(len(expert))]
        return {"variants": {
            "experts/oracle": {"success": float(np.mean(expert)), "episode_success": dict(zip(keys, expert))},
            "ties+mask/oracle": {"success": float(np.mean(merged)), "episode_success": dict(zip(keys, merged))}}}

    per_seed = {1: seed([1, 1, 0, 1], [1, 0, 0, 1]), 2: seed([1, 1, 1, 1], [1, 1, 1, 1])}
    out = bench.ratio_to_reference(per_seed, "ties+mask/oracle", n_boot=2000)
    np.testing.assert_allclose(out["per_seed"], [2 / 3, 1.0])
    pooled, lo, hi = out["pooled"]
    assert pooled == pytest.approx(6 / 7) and lo < pooled <= hi <= 1.0
    same = bench.ratio_to_reference({1: seed([1, 0, 1], [1, 0, 1])}, "ties+mask/oracle", n_boot=500)
    assert same["pooled"] == (1.0, 1.0, 1.0)  # identical episodes: no spread
    assert bench.ratio_to_reference({1: seed([0, 0], [1, 0])}, "ties+mask/oracle") is None  # experts at 0


@pytest.mark.parametrize("override, match", [
    ("mergevla.router.layer=5", "router.layer"),
    ("mergevla.demos.extra_variations=-1", "extra_variations"),
    ("mergevla.demos.extra_variations=1001", "extra_variations"),
    ("mergevla.router.k=32", "rank of a LoRA task vector"),
    ("mergevla.router.source=anywhere", "router.source"),
    ("mergevla.expert.lora_init=pissa", "lora_init"),
    ("mergevla.expert.eva_layers=[3]", "eva_layers"),
    ("mergevla.expert.eva_modules=[attn.w_proj]", "eva_modules"),
    ("mergevla.expert.eva_modules=[ffn.fc1] mergevla.expert.lora_target=backbone_attention", "eva_modules"),
])
def test_router_and_lora_init_settings_are_checked(override, match):
    from streammoe.control.mergevla.config import validated

    with pytest.raises(ConfigError, match=match):
        validated(compose_config(["experiment=mergevla", *override.split()]))


def _suite_with_words(words, suite, seed):
    data = _tiny_suite()
    rng = np.random.default_rng(seed)
    data.suite = suite
    data.obs["state"] = rng.normal(size=data.obs["state"].shape).astype(np.float32)
    data.obs["instruction"][:, :3] = words
    return data


@pytest.mark.parametrize("eva_layers, eva_modules", [(None, None), ([0], ["attn.v_proj"])])
def test_the_lora_task_vector_router_separates_eva_experts(eva_layers, eva_modules, monkeypatch):
    """Two suites that differ in their instructions: experts fine-tuned from one base with EVA's
    LoRA init (everywhere, or only where the router reads: layer 0's value projection); each
    expert's task vector of layer 0's value projection, read on the first observation under each
    suite's model, routes every episode to its own suite."""
    from streammoe.control.mergevla.router import TestTimeTaskRouter
    from streammoe.control.mergevla.train import TrainSettings, train_expert

    cfg = VLAConfig(vision=False, state_dim=17, d_model=16, n_heads=2, n_layers=2, max_instruction_len=12)
    base = TinyVLA(cfg).state_dict()
    settings = TrainSettings(steps=5, batch_size=8, lr=1e-2, weight_decay=0.0, grad_clip=1.0, shift=0,
                             log_every=5)
    suites = [_suite_with_words([7, 1, 15], "drawer", 1), _suite_with_words([3, 9, 22], "button", 2)]
    import streammoe.control.mergevla.train as train_module

    eva_names = []  # the layers whose A starts at EVA's, as train_expert hands them to add_lora
    real_add_lora = train_module.add_lora
    monkeypatch.setattr(train_module, "add_lora",
                        lambda *a, eva=None, **kw: eva_names.append(sorted(eva)) or real_add_lora(*a, eva=eva, **kw))
    experts = [train_expert(cfg, base, d, settings, lora_rank=2, lora_alpha=4.0, lora_target="backbone",
                            shared_lr_scale=0.0, lora_init="eva", eva_layers=eva_layers,
                            eva_modules=eva_modules, seed=i, device=torch.device("cpu"))[0]
               for i, d in enumerate(suites)]
    wrapped = [f"backbone.layers.{i}.{m}" for i in range(2) for m in lora_module_names("backbone")]
    assert eva_names == [["backbone.layers.0.attn.v_proj"] if eva_modules else sorted(wrapped)] * 2
    models = []
    for sd in experts:
        m = TinyVLA(cfg)
        m.load_state_dict(sd)
        models.append(m.eval())
    key = models[0].backbone_value_key(0)
    router = TestTimeTaskRouter.from_value_projections([sd[key] - base[key] for sd in experts], k=2)
    policy = SuitePolicy(models, ("drawer", "button"), "router", router, router_layer=0)
    for t, d in enumerate(suites):
        obs = {k: torch.from_numpy(v[:8]) for k, v in d.obs.items()}
        assert policy.route_batch(obs).tasks.tolist() == [t] * 8
    with pytest.raises(ValueError, match="eva_layers"):
        train_expert(cfg, base, suites[0], settings, lora_rank=2, lora_alpha=4.0, lora_target="backbone",
                     lora_init="eva", eva_layers=[2], seed=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="eva_modules"):
        train_expert(cfg, base, suites[0], settings, lora_rank=2, lora_alpha=4.0,
                     lora_target="backbone_attention", lora_init="eva", eva_modules=["ffn.fc1"], seed=0,
                     device=torch.device("cpu"))
    with pytest.raises(ValueError, match="lora_init"):
        train_expert(cfg, base, suites[0], settings, lora_rank=2, lora_alpha=4.0, lora_target="backbone",
                     lora_init="pissa", seed=0, device=torch.device("cpu"))


def _script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_entrywise_optimum_beats_every_subset_and_value():
    """Per entry, no other mask subset (with its best value, the subset's mean) has a lower error."""
    import itertools

    probe = _script("probe_mergevla_refit")
    g = torch.Generator().manual_seed(3)
    taus = [{"w": torch.randn(40, generator=g)} for _ in range(4)]
    shared, masks = probe.entrywise_optimum(taus)
    x = torch.stack([t["w"] for t in taus]).double()
    for i in range(40):
        kept = [t for t in range(4) if masks[t]["w"][i]]
        got = sum(((shared["w"][i].double() if t in kept else 0.0) - x[t, i]) ** 2 for t in range(4))
        for r in range(0, 5):
            for sub in itertools.combinations(range(4), r):
                v = x[list(sub), i].mean() if sub else 0.0
                err = sum(((v if t in sub else 0.0) - x[t, i]) ** 2 for t in range(4))
                assert got <= err + 1e-9


def test_probe_script_runs_on_the_smoke_config(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "probes.json"
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "probe_mergevla_refit.py"), "--experiment", "mergevla_smoke",
         "--seed", "0", "--out", str(out), "--", f"mergevla.data_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    probes = json.loads(out.read_text())
    assert set(probes["merges"]) == {"ties+mask", "entrywise_optimum+mask", "ties+mask+refit", "regmean",
                                     "regmean_masks+refit"}
    errs = {name: r["relative_error"] for name, r in probes["merges"].items()}
    # with the same masks, the refit's summed output error is the least (up to its tiny ridge);
    # the entry-wise optimum's summed parameter error is the least of any shared vector + masks
    tol = 1e-6 * errs["ties+mask"]["outputs_sum_sq"]
    assert errs["ties+mask+refit"]["outputs_sum_sq"] <= errs["ties+mask"]["outputs_sum_sq"] + tol
    for other in ("ties+mask", "ties+mask+refit", "regmean_masks+refit"):
        assert errs["entrywise_optimum+mask"]["parameters_sum_sq"] <= errs[other]["parameters_sum_sq"] + 1e-12
    assert probes["layer_swap"] == {}  # the smoke suites have no reach_push


def test_perception_probe_adds_entries_and_refuses_state_bases(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "perception.json"

    def probe(tag: str, *overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(root / "scripts" / "probe_mergevla_perception.py"), "--experiment",
             "mergevla_smoke", "--seed", "0", "--tag", tag, "--frames", "16", "--out", str(out), "--",
             f"mergevla.data_dir={tmp_path / 'cache'}", *overrides],
            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})

    images = ("mergevla.vision=true", "mergevla.image_size=16", "mergevla.model.patch_size=8")
    for tag, extra in (("plain", ()), ("keypoints", ("mergevla.model.keypoints=2",)), ("plain", ())):
        proc = probe(tag, *images, *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
    entries = json.loads(out.read_text())
    assert set(entries) == {"plain", "keypoints"}
    assert entries["plain"]["base_train_seconds"] is None  # the second run read the cached base
    assert entries["keypoints"]["base_train_seconds"] > 0
    row = entries["keypoints"]["per_suite"]["drawer"]
    assert set(row) == {f"{t}_{m}_cm" for t in ("hand_pos", "object_pos", "goal_pos") for m in ("error", "spread")}
    assert all(np.isfinite(v) and v >= 0 for v in row.values())
    proc = probe("state")
    assert proc.returncode != 0 and "for image bases" in proc.stderr


def test_experts_probe_compares_splits_and_traces_the_hand(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "experts.json"

    def probe(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(root / "scripts" / "probe_mergevla_experts.py"), "--experiment",
             "mergevla_smoke", "--seed", "0", "--out", str(out), *args, "--",
             f"mergevla.data_dir={tmp_path / 'cache'}", "mergevla.vision=true", "mergevla.image_size=16",
             "mergevla.model.patch_size=8"],
            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})

    proc = probe("--tag", "t", "--n", "2", "--trace-task", "reach-v3")
    assert proc.returncode != 0 and "is not a task of the suites" in proc.stderr
    proc = probe("--tag", "t", "--n", "2", "--tasks", "drawer-close-v3", "--trace-task", "drawer-close-v3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = json.loads(out.read_text())["t"]
    train, heldout = entry["variations"]["train"], entry["variations"]["heldout"]
    assert len(train) == len(heldout) == 2 and not set(train) & set(heldout)
    assert set(entry["success"]) == {"train", "heldout"}
    for rates in entry["success"].values():
        assert set(rates) == {"drawer-close-v3", "mean"}
        assert "mean" in rates and all(0.0 <= r <= 1.0 for r in rates.values())
    trace = entry["trace"]
    assert trace["task"] == "drawer-close-v3" and [e["variation"] for e in trace["episodes"]] == heldout
    assert all(len(e["final_hand"]) == 3 and e["closest_m"] >= 0 for e in trace["episodes"])
    assert trace["target_spread_cm"] >= 0 and trace["final_hand_spread_cm"] >= 0


def test_is_cached_names_the_stages(smoke):
    root, cache, _ = smoke
    from streammoe.control.mergevla.experiment import Pipeline

    cfg = compose_config(["experiment=mergevla_smoke", f"mergevla.data_dir={cache}"])
    pipe = Pipeline(cfg.mergevla, 0, torch.device("cpu"))
    assert pipe.is_cached("base", "cross_attention") and pipe.is_cached("expert", "self_attention", "button")
    assert pipe.is_cached("eval", "cross_attention", "ties+mask/router")
    assert not pipe.is_cached("eval", "cross_attention", "ties/oracle")  # never evaluated
    with pytest.raises(ValueError, match="unknown stage 'merge'"):
        pipe.is_cached("merge", "cross_attention")


def test_router_tokens_instruction_reads_only_the_words():
    """``router_tokens="instruction"`` with the layer-0 basis: the scores of the instruction's words
    alone, so the image cannot move the choice or its confidence; with ``"all"`` it does. The mask
    is the real words."""
    from streammoe.control.mergevla.router import TestTimeTaskRouter

    cfg = VLAConfig(image_size=16, patch_size=8, d_model=16, n_heads=2, n_layers=2, max_instruction_len=6)
    models = [TinyVLA(VLAConfig(**{**cfg.to_dict(), "seed": s})).eval() for s in (1, 2)]
    g = torch.Generator().manual_seed(0)
    router = TestTimeTaskRouter.from_value_projections([torch.randn(16, 16, generator=g) for _ in models], k=4)
    ins = torch.tensor([[5, 6, 7, 0, 0, 0], [9, 3, 0, 0, 0, 0]])
    obs = {"image": torch.randint(0, 256, (2, 16, 16, 3), generator=g, dtype=torch.uint8),
           "proprio": torch.randn(2, 4, generator=g), "instruction": ins}
    other = {**obs, "image": 255 - obs["image"]}
    mask = models[0].instruction_token_mask(obs)
    assert mask.tolist() == [[False] * 4 + [True] * 3 + [False] * 4, [False] * 4 + [True] * 2 + [False] * 5]
    conf = {}
    for tokens in ("all", "instruction"):
        policy = SuitePolicy(models, ("drawer", "button"), "router", router, router_layer=0, router_tokens=tokens)
        conf[tokens] = [policy.route_batch(o).confidences for o in (obs, other)]
    torch.testing.assert_close(conf["instruction"][0], conf["instruction"][1])
    assert not torch.allclose(conf["all"][0], conf["all"][1])
    # (at layer 0 the words have not yet attended to the image; deeper, e.g. the reference's basis
    # of the last shared block, they have, and the image moves the scores under either setting)
    with pytest.raises(ValueError, match="router_tokens must be"):
        SuitePolicy(models, ("drawer", "button"), "router", router, router_tokens="words")


def test_refit_vision_refits_the_trained_encoder_and_only_its_runs_change_fingerprint(tmp_path):
    """``merge.refit_vision``: the encoder's linear and convolution layers get Gram matrices (a
    convolution's of its patches) and the refit moves its merged vector; the backbone's refit is
    the same either way; left at false it stays out of the evaluation's fingerprint (the cached
    evaluations made before it stay valid)."""
    from streammoe.control.mergevla.experiment import Pipeline

    images = ["experiment=mergevla_smoke", f"mergevla.data_dir={tmp_path / 'cache'}", "mergevla.vision=true",
              "mergevla.image_size=16", "mergevla.model.patch_size=8", "mergevla.model.keypoints=2",
              "mergevla.expert.train_vision=true", "mergevla.merge.refit_frames=32"]
    head = "cross_attention"
    pipes = {flag: Pipeline(compose_config([*images, f"mergevla.merge.refit_vision={flag}"]).mergevla, 0,
                            torch.device("cpu")) for flag in (False, True)}
    grams = {flag: pipe.grams(head) for flag, pipe in pipes.items()}
    vision = {k for k in grams[True][0] if k.startswith("embed.vision.")}
    assert not any(k.startswith("embed.vision.") for k in grams[False][0])
    assert {"embed.vision.conv1.weight", "embed.vision.conv2.weight", "embed.vision.kp_conv1.weight",
            "embed.vision.kp_embed.weight"} <= vision
    base, _, _ = pipes[True].experts(head)
    for key in vision:
        n_in = base[key][0].numel()
        assert all(g[key].shape == (n_in, n_in) for g in grams[True])
    merged = {flag: pipe.merge(head, "ties", refit=True) for flag, pipe in pipes.items()}
    backbone = [k for k in merged[True].tau if k.startswith("backbone.")]
    assert backbone and all(torch.allclose(merged[True].tau[k], merged[False].tau[k]) for k in backbone)
    assert any(not torch.allclose(merged[True].tau[k], merged[False].tau[k]) for k in vision)
    specs = {flag: pipe._eval_spec(head, "ties+mask+refit/router")[1]["merge"] for flag, pipe in pipes.items()}
    assert "refit_vision" not in specs[False] and specs[True]["refit_vision"] is True
    for variant in ("experts/oracle", "ties+mask/router"):  # no refit: the switch changes nothing there
        assert pipes[True]._eval_spec(head, variant) == pipes[False]._eval_spec(head, variant)


def test_per_suite_vision_encoder_keeps_each_experts_encoder_with_its_head(tmp_path):
    """``merge.vision_encoder=per_suite``: each suite's merged model carries its own expert's
    vision encoder (the rest merged as before: the backbone's refit is unchanged, the encoder gets
    no Gram matrices); the setting enters only the merged variants' fingerprints, and at
    ``merged``, on the object state or with frozen encoders it changes nothing."""
    from streammoe.control.mergevla.config import validated
    from streammoe.control.mergevla.experiment import Pipeline

    images = ["experiment=mergevla_smoke", f"mergevla.data_dir={tmp_path / 'cache'}", "mergevla.vision=true",
              "mergevla.image_size=16", "mergevla.model.patch_size=8", "mergevla.model.keypoints=2",
              "mergevla.expert.train_vision=true", "mergevla.merge.refit_frames=32",
              "mergevla.merge.refit_vision=true"]
    head = "cross_attention"
    pipes = {mode: Pipeline(compose_config([*images, f"mergevla.merge.vision_encoder={mode}"]).mergevla, 0,
                            torch.device("cpu")) for mode in ("merged", "per_suite")}
    assert pipes["per_suite"].encoder_per_suite() and not pipes["merged"].encoder_per_suite()
    base, experts, _ = pipes["per_suite"].experts(head)
    vision = [k for k in base if k.startswith("embed.vision.")]
    assert vision and any(not torch.equal(experts[0][k], experts[1][k]) for k in vision)
    assert not any(k.startswith("embed.vision.") for k in pipes["per_suite"].grams(head)[0])
    merged = {mode: pipe.merge(head, "ties", refit=True) for mode, pipe in pipes.items()}
    for t, expert in enumerate(experts):
        sd = merged["per_suite"].state_dict_for(t)
        assert all(torch.equal(sd[k], expert[k]) for k in vision)
        assert not any(k in merged["per_suite"].tau for k in vision)
    assert any(k in merged["merged"].tau for k in vision)
    backbone = [k for k in merged["merged"].tau if k.startswith("backbone.")]
    assert backbone and all(torch.allclose(merged["merged"].tau[k], merged["per_suite"].tau[k]) for k in backbone)
    spec = {mode: pipe._eval_spec(head, "ties+mask+refit/router")[1]["merge"] for mode, pipe in pipes.items()}
    assert "vision_encoder" not in spec["merged"] and spec["merged"]["refit_vision"] is True
    assert spec["per_suite"]["vision_encoder"] == "per_suite" and "refit_vision" not in spec["per_suite"]
    for variant in ("experts/oracle", "naive_full/single"):  # nothing merged: the setting changes nothing
        assert pipes["per_suite"]._eval_spec(head, variant) == pipes["merged"]._eval_spec(head, variant)
    for off in (["mergevla.expert.train_vision=false"], ["mergevla.vision=false"]):
        pipe = Pipeline(compose_config([*images, *off, "mergevla.merge.vision_encoder=per_suite"]).mergevla, 0,
                        torch.device("cpu"))
        assert not pipe.encoder_per_suite()
    with pytest.raises(ConfigError, match="vision_encoder"):
        validated(compose_config(["experiment=mergevla", "mergevla.merge.vision_encoder=own"]))


def test_discriminative_router_changes_only_routed_fingerprints(tmp_path):
    """``router.discriminative``: the routed variants' policies get the suites' distinctive
    directions (unit columns, n per suite); at 0 (and for every variant that does not route) the
    setting stays out of the evaluation's fingerprint, so the cached evaluations stay valid."""
    from streammoe.control.mergevla.experiment import Pipeline

    over = ["experiment=mergevla_smoke", f"mergevla.data_dir={tmp_path / 'cache'}"]
    head = "cross_attention"
    pipes = {n: Pipeline(compose_config([*over, f"mergevla.router.discriminative={n}"]).mergevla, 0,
                         torch.device("cpu")) for n in (0, 1)}
    plain, _ = pipes[0].policy(head, "ties+mask/router")
    distinct, _ = pipes[1].policy(head, "ties+mask/router")
    assert [b.shape[1] for b in plain.router.bases] == [2] * len(pipes[0].suites)
    assert [b.shape[1] for b in distinct.router.bases] == [1] * len(pipes[1].suites)
    projectors = [p.double() @ p.double().T for p in plain.router.bases]
    mean = sum(projectors) / len(projectors) + 1e-3 * torch.eye(projectors[0].shape[0], dtype=torch.float64)

    def quotient(t: int, v: torch.Tensor) -> torch.Tensor:  # how much more suite t reads v than all do
        v = v.double()
        return (v * (projectors[t] @ v)).sum(0) / (v * (mean @ v)).sum(0)

    for t, (p, d) in enumerate(zip(plain.router.bases, distinct.router.bases)):
        assert float(quotient(t, d)[0]) >= float(quotient(t, p).max()) - 1e-6
    specs = {n: pipe._eval_spec(head, "ties+mask/router")[1]["router"] for n, pipe in pipes.items()}
    assert "discriminative" not in specs[0] and "ridge" not in specs[0]
    assert specs[1]["discriminative"] == 1 and specs[1]["ridge"] > 0
    for variant in ("experts/oracle", "ties+mask/oracle", "naive_full/single"):
        assert pipes[0]._eval_spec(head, variant) == pipes[1]._eval_spec(head, variant)


def test_markers_reach_the_evaluation_and_change_nothing_without_images(tmp_path, monkeypatch):
    """``mergevla.markers``: the evaluation's envs draw them as the demonstrations' did; on the
    object state they draw nothing, so the demonstrations and evaluations stay the cached ones."""
    from streammoe.control.mergevla import experiment as mergevla_experiment
    from streammoe.control.mergevla.experiment import Pipeline

    over = ["experiment=mergevla_smoke", f"mergevla.data_dir={tmp_path / 'cache'}"]
    head = "cross_attention"
    pipes = {flag: Pipeline(compose_config([*over, f"mergevla.markers={flag}"]).mergevla, 0,
                            torch.device("cpu")) for flag in (False, True)}
    assert pipes[True]._eval_spec(head, "experts/oracle") == pipes[False]._eval_spec(head, "experts/oracle")
    seen = {}
    monkeypatch.setattr(mergevla_experiment, "evaluate", lambda *a, **kw: seen.update(kw))
    policy, _ = pipes[True].policy(head, "experts/oracle")
    pipes[True].run_episodes(policy, tasks=[pipes[True].tasks[0]])
    assert seen["markers"] is True and seen["vision"] is False


def test_suite_expert_probe_trains_one_expert_and_reads_it_back(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "suite_expert.json"

    def probe(tag: str, suite: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(root / "scripts" / "probe_mergevla_suite_expert.py"), "--experiment",
             "mergevla_smoke", "--seed", "0", "--suite", suite, "--tag", tag, "--out", str(out), "--",
             f"mergevla.data_dir={tmp_path / 'cache'}", "mergevla.eval.episodes_per_task=2"],
            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})

    for tag in ("first", "again"):
        proc = probe(tag, "button")
        assert proc.returncode == 0, proc.stderr[-2000:]
    entries = json.loads(out.read_text())
    assert entries["first"]["expert_train_seconds"] > 0 and entries["again"]["expert_train_seconds"] is None
    from streammoe_envs.metaworld import SUITES

    assert set(entries["again"]["per_task"]) == set(SUITES["button"])
    assert entries["again"]["episodes"] == 2 * len(SUITES["button"])
    assert entries["again"]["per_task"] == entries["first"]["per_task"]  # deterministic resets
    proc = probe("nope", "reach_push")
    assert proc.returncode != 0 and "is not one of the run's suites" in proc.stderr


def test_merge_parts_probe_puts_back_one_part_at_a_time(tmp_path):
    """``scripts/probe_mergevla_merge_parts.py``: each hybrid takes exactly its part from the
    other model (``hybrids``); the script runs every hybrid on the suite's episodes, and a
    merge-less variant or the object state is refused by name."""
    import subprocess
    import sys

    from streammoe.control.mergevla.experiment import Pipeline

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    from probe_mergevla_merge_parts import HYBRIDS, hybrids

    out = tmp_path / "parts.json"
    images = [f"mergevla.data_dir={tmp_path / 'cache'}", "mergevla.eval.episodes_per_task=1", "mergevla.vision=true",
              "mergevla.image_size=16", "mergevla.model.patch_size=8", "mergevla.model.keypoints=2",
              "mergevla.expert.train_vision=true", "mergevla.merge.refit_frames=32"]
    head = "cross_attention"
    pipe = Pipeline(compose_config(["experiment=mergevla_smoke", *images]).mergevla, 0, torch.device("cpu"))
    _, experts, _ = pipe.experts(head)
    merged = pipe.merge(head, "ties", refit=True).state_dict_for(1)
    models = hybrids(merged, experts[1], pipe.build(head, experts[1]))
    assert list(models) == [name for name, _, _ in HYBRIDS]

    def source(sd: dict, key: str) -> str:
        return "both" if torch.equal(merged[key], experts[1][key]) else (
            "merged" if torch.equal(sd[key], merged[key]) else "expert")

    kp, conv = "embed.vision.kp_conv1.weight", "embed.vision.conv1.weight"
    bb = next(k for k in merged if k.startswith("backbone.") and not torch.equal(merged[k], experts[1][k]))
    assert {source(models["merged + expert's vision encoder"], k) for k in (kp, conv)} == {"expert"}
    assert source(models["merged + expert's vision encoder"], bb) == "merged"
    assert [source(models["merged + expert's keypoint branch"], k) for k in (kp, conv)] == ["expert", "merged"]
    assert [source(models["merged + expert's patch convolutions"], k) for k in (kp, conv)] == ["merged", "expert"]
    assert [source(models["merged + expert's backbone"], k) for k in (kp, bb)] == ["merged", "expert"]
    assert [source(models["expert + merged vision encoder"], k) for k in (conv, bb)] == ["merged", "expert"]

    def probe(*extra: str, variant: str = "ties+mask+refit/oracle") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(root / "scripts" / "probe_mergevla_merge_parts.py"), "--experiment",
             "mergevla_smoke", "--suite", "button", "--variant", variant, "--tag", "t", "--out", str(out),
             "--", *images, *extra],
            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})

    proc = probe()
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = json.loads(out.read_text())["t"]
    from streammoe_envs.metaworld import SUITES

    assert len(entry["success"]) == len(HYBRIDS) and entry["episodes"] == len(SUITES["button"])
    proc = probe(variant="experts/oracle")
    assert proc.returncode != 0 and "merges nothing" in proc.stderr
    proc = probe("mergevla.vision=false")
    assert proc.returncode != 0 and "vision=true" in proc.stderr


def test_bench_table_from_run_folders_equals_the_table_from_the_cache(smoke, tmp_path):
    """Two seeds' run folders pool into the table the cache gives for the same seeds; runs of one
    seed twice, of other settings, or without their files are refused by name."""
    import shutil

    import yaml

    root, cache, _ = smoke
    cfg = compose_config(["experiment=mergevla_smoke", f"mergevla.data_dir={cache}", "seed=1",
                          "mergevla.eval.video=false"])
    run_experiment(cfg, tmp_path / "seed1")
    bench = _script("bench_mergevla")
    runs = [root / "run", tmp_path / "seed1"]
    per_seed, settings = bench.per_seed_from_runs(runs)
    assert sorted(per_seed) == [0, 1] and settings["suites"] == ["drawer", "button"]
    variants = list(per_seed[0]["variants"])
    ablation = [v.split(":", 1)[1] for v in variants if v.startswith("self_attention:")]
    plain = [v for v in variants if ":" not in v]
    over = [f"mergevla.data_dir={cache}"]
    from_cache = {s: bench.run_seed("mergevla_smoke", over, s, plain, ablation, None) for s in (0, 1)}
    table, expected = bench.aggregate(per_seed, settings["suites"]), bench.aggregate(from_cache, settings["suites"])
    assert set(table) == set(expected)
    for name, row in expected.items():
        assert table[name]["success"] == row["success"] and table[name]["per_seed"] == row["per_seed"], name
        assert table[name].get("of_experts") == row.get("of_experts"), name
        assert table[name].get("router_confusion") == row.get("router_confusion"), name

    with pytest.raises(ValueError, match="both seed 0"):
        bench.per_seed_from_runs([root / "run", root / "run"])
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "seed1", other)
    resolved = yaml.safe_load((other / "config_resolved.yaml").read_text())
    resolved["mergevla"]["expert"]["steps"] += 1
    (other / "config_resolved.yaml").write_text(yaml.safe_dump(resolved))
    with pytest.raises(ValueError, match=r"expert\.steps"):
        bench.per_seed_from_runs([root / "run", other])
    (other / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match="results.json"):
        bench.per_seed_from_runs([other])


def test_extra_variations_reach_the_pipelines_demonstrations(tmp_path):
    from streammoe_envs.metaworld import N_VARIATIONS

    from streammoe.control.mergevla.data import read_demos
    from streammoe.control.mergevla.experiment import Pipeline

    cfg = compose_config(["experiment=mergevla_smoke", f"mergevla.data_dir={tmp_path}",
                          "mergevla.demos.extra_variations=2", "mergevla.pretrain_tasks=[]"])
    _, _, info = Pipeline(cfg.mergevla, 0, torch.device("cpu")).demos()
    demos = read_demos(info["demo_file"])
    assert demos.settings["extra_variations"] == 2
    for task in demos.stats:
        assert sorted(ep.variation for ep in demos.episodes if ep.task == task)[-2:] == [
            N_VARIATIONS, N_VARIATIONS + 1]
