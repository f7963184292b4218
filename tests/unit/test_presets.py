"""Stage presets follow the ModelZoo table; every value can be overridden."""
import pytest

from refinenet.presets import preset


@pytest.mark.parametrize("device, ranks, stage, batch, base_lr", [
    ("ascend", 1, "r1", 32, 0.0015), ("ascend", 1, "r2", 32, 0.00015),
    ("ascend", 8, "r1", 32, 0.0032), ("ascend", 8, "r2", 32, 0.00032),
    ("gpu", 1, "r1", 16, 0.001), ("gpu", 1, "r2", 16, 0.0001),
    ("gpu", 8, "r1", 8, 0.004), ("gpu", 8, "r2", 8, 0.00004),
    ("cpu", 1, "r1", 16, 0.001), ("cpu", 2, "r2", 8, 0.00004),
])
def test_table(device, ranks, stage, batch, base_lr):
    p = preset(stage, device, ranks)
    assert (p.batch_size, p.base_lr) == (batch, base_lr)
    assert (p.epochs, p.crop_size, p.min_scale, p.max_scale, p.lr_type) == (200, 513, 0.5, 3.0, "cos")
    assert (p.momentum, p.weight_decay, p.loss_scale, p.save_epochs) == (0.9, 5e-4, 1024.0, 5)


def test_amp_per_device():
    assert [preset("r1", d).amp_level for d in ("ascend", "gpu", "cpu")] == ["O3", "O2", "O0"]


def test_overrides_replace_only_given_values():
    p = preset("r1", "cpu", 1, {"batch_size": 2, "crop_size": 65, "base_lr": None, "depth": 18})
    assert (p.batch_size, p.crop_size, p.depth, p.base_lr) == (2, 65, 18, 0.001)


@pytest.mark.parametrize("args, needle", [
    (("r3",), "stage"), (("r1", "tpu"), "device"), (("r1", "cpu", 0), "rank")])
def test_bad_values(args, needle):
    with pytest.raises(ValueError, match=needle):
        preset(*args)


def test_unknown_override_is_refused():
    with pytest.raises(TypeError):
        preset("r1", overrides={"no_such_field": 1})
