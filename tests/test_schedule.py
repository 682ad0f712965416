import pytest

from lit_reason.schedule import LRSchedule


def test_lr_schedule_by_hand():
    schedule = LRSchedule(warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    assert [schedule.factor(s, 104) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule.factor(4, 104) == pytest.approx(1.0)
    assert schedule.factor(54, 104) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule.factor(104, 104) == pytest.approx(0.1)
    assert schedule.factor(500, 104) == pytest.approx(0.1)
    linear = LRSchedule(warmup_steps=0, decay="linear", min_lr_ratio=0.0)
    assert linear.factor(25, 100) == pytest.approx(0.75)
    assert LRSchedule(decay="constant").factor(99, 100) == 1.0
    # Step 0 of a window has the same factor whatever the window's length (Expert Iteration relies on it).
    for schedule in (LRSchedule(warmup_steps=3), LRSchedule(), LRSchedule(decay="linear")):
        assert len({schedule.factor(0, total) for total in (1, 2, 10, 1000)}) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_lr_ratio": -0.1}, r"lr_schedule\.min_lr_ratio must be between 0 and 1, got -0\.1"),
        ({"min_lr_ratio": 1.5}, r"lr_schedule\.min_lr_ratio must be between 0 and 1, got 1\.5"),
        ({"warmup_steps": -2}, r"lr_schedule\.warmup_steps must be at least 0, got -2"),
    ],
)
def test_a_schedule_that_would_give_a_negative_or_growing_rate_is_refused(options, message):
    # A negative ratio drove the learning rate below zero at the end of the window: training went uphill.
    with pytest.raises(ValueError, match=message):
        LRSchedule(**options)
