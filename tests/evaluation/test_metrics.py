import math

import numpy as np
import pytest

from distmsfa.evaluation.metrics import binary_metrics, choose_threshold, mean_std, youden_threshold


def test_metrics_match_hand_counts():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    p = [0.9, 0.6, 0.4, 0.3, 0.55, 0.1, 0.2, 0.8]
    m = binary_metrics(y, p)
    # at 0.5: TP=3 (0.9, 0.6, 0.8), FN=1 (0.4), FP=1 (0.55), TN=3
    assert m["sen"] == pytest.approx(3 / 4)
    assert m["spec"] == pytest.approx(3 / 4)
    assert m["acc"] == pytest.approx(6 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # AUC by pair counting: positives {.9,.6,.4,.8} vs negatives {.3,.55,.1,.2}
    pairs = [(a > b) + 0.5 * (a == b) for a in (0.9, 0.6, 0.4, 0.8) for b in (0.3, 0.55, 0.1, 0.2)]
    assert m["auc"] == pytest.approx(sum(pairs) / 16)


def test_threshold_is_inclusive_and_moves_the_operating_point():
    y, p = [0, 1], [0.5, 0.7]
    assert binary_metrics(y, p, 0.5)["spec"] == 0.0  # p >= threshold is positive
    assert binary_metrics(y, p, 0.6)["acc"] == 1.0


def test_youden_picks_the_separating_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.60, 0.65, 0.70, 0.80, 0.85, 0.90])
    t = youden_threshold(y, p)
    assert 0.70 < t <= 0.80
    m = binary_metrics(y, p, t)
    assert m["sen"] == 1.0 and m["spec"] == 1.0
    assert binary_metrics(y, p, 0.5)["spec"] == 0.0  # the fixed policy would call everyone positive
    assert choose_threshold("fixed", y, p) == 0.5
    assert choose_threshold("youden", y, p) == t


def test_single_class_gives_nan_auc_and_default_youden():
    m = binary_metrics([1, 1], [0.2, 0.9])
    assert math.isnan(m["auc"]) and math.isnan(m["spec"]) and m["sen"] == 0.5
    assert youden_threshold([1, 1], [0.2, 0.9]) == 0.5


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="labels must be 0"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="differ in length"):
        binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match="unknown threshold policy"):
        choose_threshold("median", [0, 1], [0.1, 0.2])


def test_mean_std_is_sample_std_and_skips_nan():
    m, s = mean_std([0.8, 0.9, float("nan"), 1.0])
    assert m == pytest.approx(0.9) and s == pytest.approx(0.1)
    assert mean_std([0.7]) == (0.7, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))
