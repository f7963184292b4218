"""The learning-rate schedules of the recipe, step by step."""
import math

import pytest

from refinenet import lr


def test_cosine_starts_at_base_and_decays_to_zero():
    values = lr.learning_rates("cos", 0.0015, steps_per_epoch=10, epochs=4)
    assert len(values) == 40
    assert values[0] == pytest.approx(0.0015)
    assert values[20] == pytest.approx(0.0015 * 0.5)
    assert values[-1] == pytest.approx(0.0015 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_poly():
    values = lr.learning_rates("poly", 0.01, steps_per_epoch=5, epochs=2)
    assert values[0] == pytest.approx(0.01)
    assert values[5] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert values[-1] == pytest.approx(0.01 * 0.1 ** 0.9)


def test_exp_is_a_staircase():
    values = lr.learning_rates("exp", 1.0, steps_per_epoch=10, epochs=3, decay_rate=0.5, decay_steps=7)
    assert values[:7] == [1.0] * 7
    assert values[7:14] == [0.5] * 7
    assert values[14] == 0.25
    default = lr.learning_rates("exp", 1.0, steps_per_epoch=500, epochs=1)
    assert default[449] == 1.0 and default[450] == pytest.approx(0.8)


def test_cos_warmup():
    base, spe, epochs, warm = 0.1, 4, 10, 2
    values = lr.learning_rates("cos_warmup", base, spe, epochs, warmup_epochs=warm)
    total, w = spe * epochs, spe * warm
    assert values[:w] == pytest.approx([base * (i + 1) / w for i in range(w)])
    for i in (w, 20, total - 1):
        frac = (total - i) / (total - w)
        expected = base * (frac * 0.5 * (1 + math.cos(2 * math.pi * 0.47 * i / (total - w))) + 1e-5)
        assert values[i] == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(lr_type="step", base_lr=0.1, steps_per_epoch=1, epochs=1), "not one of"),
    (dict(lr_type="cos", base_lr=0.1, steps_per_epoch=0, epochs=1), "at least 1"),
    (dict(lr_type="cos_warmup", base_lr=0.1, steps_per_epoch=2, epochs=3, warmup_epochs=3), "warmup"),
    (dict(lr_type="exp", base_lr=0.1, steps_per_epoch=2, epochs=3, decay_steps=0), "decay step"),
])
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        lr.learning_rates(**kwargs)
