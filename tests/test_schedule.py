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
