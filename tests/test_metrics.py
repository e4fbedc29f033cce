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


def test_anmrr_and_precision_at_k_on_a_hand_worked_example():
    """Three queries over six gallery items ranked 0..5 by score. A: ground truth at ranks 1 and
    4 (1-based); B: at 2, 3 and 6; C: at 5 only. GTM = 3.
    A: K = min(8, 6) = 6, AVR = 2.5, MRR = 2.5 - 0.5 - 1 = 1, NMRR = 1 / (7.5 - 1.5) = 1/6.
    B: K = 6, AVR = 11/3, MRR = 11/3 - 2 = 5/3, NMRR = (5/3) / (7.5 - 2) = 10/33.
    C: K = min(4, 6) = 4, rank 5 > K counts 1.25 K = 5, MRR = 5 - 1 = 4, NMRR = 4 / (5 - 1) = 1.
    P@1 = (1 + 0 + 0) / 3; P@5 = (2/5 + 2/5 + 1/5) / 3."""
    S = np.tile(np.arange(6, 0, -1, dtype=float), (3, 1))
    P = np.array([[1, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 1], [0, 0, 0, 0, 1, 0]], bool)
    m = retrieval_metrics(S, P)
    assert m["anmrr"] == pytest.approx((1 / 6 + 10 / 33 + 1.0) / 3)
    assert m["p1"] == pytest.approx(1 / 3) and m["p5"] == pytest.approx(1 / 3)
    assert m["p10"] == pytest.approx((2 + 3 + 1) / 10 / 3)
    perfect = retrieval_metrics(S[:1], np.array([[1, 1, 0, 0, 0, 0]], bool))
    assert perfect["anmrr"] == pytest.approx(0.0) and perfect["p1"] == 1.0
