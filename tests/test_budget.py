"""An elastic last stage gets as many epochs as the budget leaves room for, within its range."""
import pytest

from training.budget import plan_epochs, scaled_epoch_seconds


def test_epoch_time_scales_with_the_pixel_count_of_the_previous_stage():
    assert scaled_epoch_seconds([300.0, 340.0], 224, 288) == pytest.approx(320.0 * (288 / 224) ** 2)
    with pytest.raises(ValueError):
        scaled_epoch_seconds([], 224, 288)


@pytest.mark.parametrize("spent, expected", [
    (0, 6),        # plenty of room: capped at the high end
    (2000, 4),     # 3600 - 2000 - (60 + 60) = 1480 s of room -> 4 epochs of 300 s
    (2400, 3),     # 1080 s of room
    (3300, 1),     # no room left: still the low end
])
def test_plan_fits_epochs_in_what_is_left(spent, expected):
    plan = plan_epochs(3600, spent, 300.0, 1, 6)
    assert plan.reserve_seconds == pytest.approx(0.2 * 300 + 60)
    assert plan.epochs == expected


def test_plan_describes_itself_for_the_log():
    line = plan_epochs(3000, 600, 240.0, 2, 5).describe()
    assert "budget 50 min" in line and "-> 5 epochs" in line
