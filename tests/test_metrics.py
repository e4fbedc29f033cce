import numpy as np
import pytest

from skyfix.train.metrics import average_precision, retrieval_metrics


def test_metrics_on_hand_made_case():
    # 3 queries, gallery of 4. Scores give rankings:
    # q0: g0 g1 g2 g3, positives {g0}      -> first hit rank 0, AP 1
    # q1: g3 g2 g1 g0, positives {g1, g0}  -> hits at ranks 2, 3: AP = (1/3 + 2/4) / 2 = 5/12
    # q2: g1 g0 g3 g2, positives {g2}      -> hit at rank 3: AP = 1/4
    S = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4], [0.8, 0.9, 0.1, 0.5]])
    P = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]], bool)
    m = retrieval_metrics(S, P, ks=(1, 3, 5))
    assert m["r1"] == pytest.approx(1 / 3)
    assert m["r3"] == pytest.approx(2 / 3)
    assert m["r5"] == pytest.approx(1.0)
    assert m["r1pct"] == pytest.approx(1 / 3)  # 1 % of 4 rounds up to K = 1
    assert m["ap"] == pytest.approx((1 + 5 / 12 + 1 / 4) / 3)
    assert m["n_queries"] == 3


def test_queries_without_positive_are_left_out_and_counted():
    S = np.array([[0.9, 0.1], [0.5, 0.4]])
    P = np.array([[0, 1], [0, 0]], bool)
    m = retrieval_metrics(S, P)
    assert m["n_queries"] == 1 and m["n_without_positive"] == 1
    assert m["r1"] == 0.0 and m["ap"] == pytest.approx(0.5)


def test_average_precision_of_empty_is_nan():
    assert np.isnan(average_precision(np.array([], int)))
