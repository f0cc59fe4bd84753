"""Run configs: recipe < YAML < explicit values, one-line errors for bad values, the lr schedules, the shipped
config files."""

from __future__ import annotations

import pytest

from dsrnet.errors import DsrnetError
from dsrnet.train import LEGACY_DEFAULTS, RECIPES, RESUME_MUTABLE, TrainConfig, load_config_file, lr_factor
from dsrnet.train.config import _check_resume_overrides, shipped_config_path

# -------------------------------------------------------------------------------------------------- config


def test_recipe_defaults_and_overrides():
    paper = TrainConfig.from_recipe("paper", device="cpu")
    assert (paper.epochs, paper.batch_size, paper.lr, paper.weight_decay, paper.momentum) == (
        160,
        128,
        0.1,
        5e-4,
        0.9,
    )
    assert paper.milestones == [80, 120] and paper.schedule == "step" and not paper.nesterov
    assert paper.precision == "fp32" and paper.bn_bias_weight_decay and paper.label_smoothing == 0
    assert TrainConfig.from_recipe("paper", device="cpu", epochs=10).milestones == [5, 7]
    fast = TrainConfig.from_recipe("fast", device="cpu")
    assert (
        fast.batch_size == 512
        and fast.nesterov
        and fast.label_smoothing == 0.1
        and not fast.bn_bias_weight_decay
    )
    assert fast.milestones == [] and fast.schedule == "linear"
    assert paper.dwconv == fast.dwconv == "torch"  # the Triton depthwise conv only when asked for
    # The GPU-only speed-ups fall back on a CPU unless asked for explicitly.
    assert (fast.precision, fast.channels_last, fast.compile) == ("fp32", False, False)
    assert (
        RECIPES["fast"]["precision"] == "bf16"
        and RECIPES["fast"]["compile"]
        and RECIPES["fast"]["channels_last"]
    )
    explicit = TrainConfig.from_recipe("fast", device="cpu", precision="bf16", channels_last=True, lr="4e-1")
    assert explicit.precision == "bf16" and explicit.channels_last and explicit.lr == 0.4
    assert TrainConfig(recipe="fast", device="cpu") == fast
    assert TrainConfig.from_recipe(
        "paper", device="cpu", model_kwargs='{"widths": [8, 16, 32, 64]}'
    ).model_kwargs == {"widths": [8, 16, 32, 64]}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model": "resnet5"}, "unknown model 'resnet5'; fix: choose one of"),
        ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
        ({"recipe": "slow"}, "unknown recipe 'slow'"),
        ({"precision": "fp8"}, "bad value for precision: 'fp8'"),
        ({"epochs": -3}, "bad value for epochs: -3"),
        ({"epochs": "ten"}, "bad value for epochs: 'ten'; fix: use an integer"),
        ({"batch_size": 0}, "bad value for batch_size"),
        ({"lr": 0}, "bad value for lr"),
        ({"lr": "nan"}, "bad value for lr"),
        ({"momentum": 1.5}, "bad value for momentum"),
        ({"label_smoothing": 1.0}, "bad value for label_smoothing"),
        ({"schedule": "poly"}, "bad value for schedule"),
        ({"milestones": [120, 80]}, "bad value for milestones"),
        ({"milestones": [2, 2], "epochs": 4}, r"bad value for milestones.*strictly ascending"),
        ({"milestones": [10], "schedule": "cosine"}, "milestones"),
        ({"warmup_epochs": 500}, "bad value for warmup_epochs"),
        ({"device": "tpu"}, "device"),
        ({"model_kwargs": "{not json"}, "bad value for model_kwargs"),
        ({"subset_per_class": 0}, "bad value for subset_per_class"),
        ({"nesterov": "maybe"}, "bad value for nesterov"),
        ({"sync_bn": True}, "sync_bn"),
        ({"lrr": 0.1}, "unknown config key"),
        ({"dwconv": "cudnn"}, "bad value for dwconv: 'cudnn'; fix: use one of torch, shifts, triton"),
        ({"pointwise": "linear"}, "bad value for pointwise: 'linear'; fix: use one of conv, matmul"),
        ({"pad_fill": "wrap"}, "bad value for pad_fill: 'wrap'; fix: use one of zero, mean, reflect"),
        ({"cutout": -1}, r"bad value for cutout: -1; fix: use an integer in 0\.\.32"),
        ({"cutout": 33}, r"bad value for cutout: 33; fix: use an integer in 0\.\.32"),
        ({"cutout": 97, "dataset": "stl10"}, r"in 0\.\.96"),
        ({"cutout": "big"}, "bad value for cutout: 'big'; fix: use an integer"),
        ({"cutout": 1.5}, "bad value for cutout"),
        ({"dw_weight_decay": "maybe"}, "bad value for dw_weight_decay: 'maybe'; fix: use true or false"),
        ({"ema_decay": 1.0}, r"bad value for ema_decay: 1\.0; fix: use a number in \[0, 1\) \(0 = off\)"),
        ({"ema_decay": -0.1}, "bad value for ema_decay: -0.1"),
    ],
)
def test_bad_config_values_are_one_line_errors(override, message):
    with pytest.raises(DsrnetError, match=message) as err:
        TrainConfig.from_recipe(**{"device": "cpu", **override})
    assert "\n" not in str(err.value)


def test_lr_schedules():
    spe = 10
    paper = TrainConfig.from_recipe("paper", device="cpu", epochs=8)  # milestones 4, 6
    f = [lr_factor(s, cfg=paper, steps_per_epoch=spe) for s in range(80)]
    assert (
        f[0] == f[39] == 1 and f[40] == f[59] == pytest.approx(0.1) and f[60] == f[79] == pytest.approx(0.01)
    )
    fast = TrainConfig.from_recipe("fast", device="cpu", epochs=10, warmup_epochs=2)
    f = [lr_factor(s, cfg=fast, steps_per_epoch=spe) for s in range(100)]
    assert f[0] == pytest.approx(1 / 20) and f[19] == 1 and f[20] == 1  # linear warm-up to the peak
    assert all(a > b for a, b in zip(f[20:], f[21:], strict=False)) and 0 < f[-1] < 0.02  # linear to ~0
    cos = TrainConfig.from_recipe("fast", device="cpu", epochs=10, warmup_epochs=0, schedule="cosine")
    f = [lr_factor(s, cfg=cos, steps_per_epoch=spe) for s in range(100)]
    assert f[0] == 1 and f[50] == pytest.approx(0.5) and f[-1] < 0.001


def test_yaml_config_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("recipe: fast\nepochs: 3\nweight-decay: 5e-4\nmodel_kwargs:\n  widths: [8, 16, 32, 64]\n")
    values = load_config_file(good)
    assert values == {
        "recipe": "fast",
        "epochs": 3,
        "weight_decay": "5e-4",
        "model_kwargs": {"widths": [8, 16, 32, 64]},
    }
    cfg = TrainConfig.from_recipe(**{**values, "device": "cpu"})
    assert cfg.weight_decay == 5e-4 and cfg.epochs == 3 and cfg.batch_size == 512
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(DsrnetError, match="unknown key.*learning_rate.*bad.yaml"):
        load_config_file(bad_key)
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [3\n")
    with pytest.raises(DsrnetError, match="not valid YAML"):
        load_config_file(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(DsrnetError, match="must hold a mapping"):
        load_config_file(listy)
    with pytest.raises(DsrnetError, match="is a folder; fix: pass a YAML file"):
        load_config_file(tmp_path)
    with pytest.raises(DsrnetError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")


def test_recipe_config_files_match_the_recipes():
    configs = shipped_config_path("fast").parent
    paper = load_config_file(configs / "paper.yaml")
    assert TrainConfig.from_recipe(**paper, device="cpu") == TrainConfig.from_recipe(
        "paper", model="dsrnet50", device="cpu"
    )
    fast = load_config_file(configs / "fast.yaml")
    assert TrainConfig.from_recipe(**fast, device="cpu") == TrainConfig.from_recipe(
        "fast", model="dsrnet50_cifar", device="cpu"
    )
    smoke = TrainConfig.from_recipe(**load_config_file(configs / "cpu-smoke.yaml"))
    assert smoke.device == "cpu" and smoke.model_kwargs["widths"] == [8, 16, 32, 64]
    # ... also where the recipe derives values from others (`--config fast --epochs 3` used to warm up for the whole
    # run, `--config paper --batch-size 256` kept lr 0.1, `--config paper --epochs 8` kept milestones 80/120)
    for name, model in (("fast", "dsrnet50_cifar"), ("paper", "dsrnet50")):
        values = load_config_file(configs / f"{name}.yaml")
        for change in ({"epochs": 3}, {"epochs": 8}, {"batch_size": 256}):
            from_file = TrainConfig.from_recipe(**{**values, **change}, device="cpu")
            assert from_file == TrainConfig.from_recipe(name, model=model, device="cpu", **change), (name, change)


def test_paper_milestones_are_half_and_three_quarters_of_the_run_once_each():
    assert TrainConfig.from_recipe("paper", device="cpu").milestones == [80, 120]
    assert TrainConfig.from_recipe("paper", device="cpu", epochs=8).milestones == [4, 6]
    assert TrainConfig.from_recipe("paper", device="cpu", epochs=2).milestones == [1]  # was [1, 1]: lr / 100
    assert TrainConfig.from_recipe("paper", device="cpu", epochs=1).milestones == []  # was [1]: never applied


def test_a_milestone_at_the_last_epoch_is_taken_with_a_warning(caplog):
    """It never applies (the rate drops after epoch m): said, not refused, since runs before 2026-11-27 recorded
    [1] for 1-epoch step runs and must still resume and repeat."""
    with caplog.at_level("WARNING", logger="dsrnet"):
        cfg = TrainConfig.from_recipe("paper", device="cpu", epochs=4, milestones=[2, 4])
    assert cfg.milestones == [2, 4] and "milestone 4 = epochs never applies" in caplog.text


def test_recipe_lr_scales_with_batch_size_unless_given():
    assert TrainConfig.from_recipe("fast", device="cpu").lr == pytest.approx(0.4)
    assert TrainConfig.from_recipe("fast", device="cpu", batch_size=128).lr == pytest.approx(0.1)
    assert TrainConfig.from_recipe("paper", device="cpu", batch_size=256).lr == pytest.approx(0.2)
    assert TrainConfig.from_recipe("fast", device="cpu", batch_size=128, lr=0.3).lr == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"batch_size": 1}, "BatchNorm needs 2"),
        ({"seed": 99999999999999999999}, "bad value for seed"),
        ({"model_kwargs": {"features_only": True}}, "no features_only"),
        ({"model_kwargs": {"num_classes": 3}}, "no num_classes"),
    ],
)
def test_values_that_would_fail_mid_run_are_refused_up_front(override, message):
    with pytest.raises(DsrnetError, match=message):
        TrainConfig.from_recipe(recipe="paper", device="cpu", **override)


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("epochs: 2\nlr: 0.1\nepochs: 30\n")
    with pytest.raises(DsrnetError, match="key 'epochs' appears twice"):
        load_config_file(path)
    path.write_text("batch-size: 64\nbatch_size: 16\n")  # one setting in two spellings: 64 was silently lost
    with pytest.raises(DsrnetError, match="sets batch_size twice .*; fix: keep one of them"):
        load_config_file(path)


def test_a_compile_mode_without_compile_is_refused():
    """--compile-mode without --compile was recorded in config.yaml and did nothing."""
    with pytest.raises(DsrnetError, match="compile_mode=reduce-overhead only applies with compile; fix: add --compile"):
        TrainConfig.from_recipe("paper", device="cpu", compile=False, compile_mode="reduce-overhead")
    assert TrainConfig.from_recipe("paper", device="cpu", compile=True, compile_mode="reduce-overhead").compile



def test_regularisation_switches_are_off_by_default_and_set_from_yaml_or_values(tmp_path):
    for recipe in RECIPES:
        cfg = TrainConfig.from_recipe(recipe, device="cpu")
        assert (cfg.cutout, cfg.pad_fill, cfg.dw_weight_decay) == (0, "zero", True), recipe
        assert LEGACY_DEFAULTS["cutout"] == 0 and LEGACY_DEFAULTS["dw_weight_decay"] is True
    path = tmp_path / "arms.yaml"
    path.write_text("recipe: fast\ncutout: 16\npad-fill: reflect\ndw_weight_decay: false\n")
    cfg = TrainConfig.from_recipe(**load_config_file(path), device="cpu")
    assert (cfg.cutout, cfg.pad_fill, cfg.dw_weight_decay) == (16, "reflect", False)
    assert TrainConfig.from_recipe("fast", device="cpu", cutout="8", dw_weight_decay="no").cutout == 8
    assert TrainConfig.from_recipe(**cfg.to_dict()) == cfg  # what config.yaml records resolves to itself


def test_resume_refuses_changed_switches_also_against_a_checkpoint_from_before_them():
    saved = TrainConfig.from_recipe("fast", device="cpu", cutout=16).to_dict()
    legacy = {k: v for k, v in saved.items() if k not in ("cutout", "dw_weight_decay", "pad_fill")}
    assert RESUME_MUTABLE.isdisjoint({"cutout", "pad_fill", "dw_weight_decay"})
    _check_resume_overrides(saved, {"cutout": 16, "pad_fill": "zero"}, "ck.pt")  # the saved values: fine
    with pytest.raises(DsrnetError, match="cutout=0 differs from the checkpoint's 16"):
        _check_resume_overrides(saved, {"cutout": 0}, "ck.pt")
    with pytest.raises(DsrnetError, match="dw_weight_decay=False differs from the checkpoint's True"):
        _check_resume_overrides(saved, {"dw_weight_decay": False}, "ck.pt")
    # A checkpoint saved before the switches existed ran with them off: the same is fine, a change is refused.
    _check_resume_overrides(legacy, {"cutout": 0, "pad_fill": "zero", "dw_weight_decay": True}, "old.pt")
    for key, value in (("cutout", 16), ("pad_fill", "reflect"), ("dw_weight_decay", False)):
        with pytest.raises(DsrnetError, match=f"{key}={value!r} differs from the checkpoint's"):
            _check_resume_overrides(legacy, {key: value}, "old.pt")


@pytest.mark.parametrize("name", ["fast", "paper", "cpu-smoke"])
def test_shipped_configs_load_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here: the package's own copy is read
    by_name = load_config_file(name)
    assert by_name == load_config_file(f"{name}.yaml") == load_config_file(shipped_config_path(name))
    assert by_name and "recipe" in by_name  # (what each file holds: test_recipe_config_files_match_the_recipes)


def test_a_local_file_wins_over_a_shipped_name_and_unknown_names_list_the_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast.yaml").write_text("epochs: 3\n")
    assert load_config_file("fast.yaml") == {"epochs": 3}
    with pytest.raises(DsrnetError, match=r"fastest not found; fix: .*shipped config name \(fast, paper, cpu-smoke\)"):
        load_config_file("fastest")
