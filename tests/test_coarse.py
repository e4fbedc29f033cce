"""The retrieval density peak (seed 003's k-NN kernel density position)."""
import numpy as np
import pytest

from skyfix.edge.coarse import density_position


def test_the_peak_sits_where_the_retrieved_places_agree_not_at_the_single_best():
    # The best tile alone at (500, 0); four slightly weaker ones around (0, 0).
    east = np.array([500.0, 10.0, -10.0, 0.0, 5.0])
    north = np.array([0.0, 0.0, 5.0, -10.0, 10.0])
    scores = np.array([0.80, 0.78, 0.77, 0.77, 0.76])
    c = density_position(east, north, scores, sigma_m=50.0)
    assert np.hypot(c.east_m, c.north_m) < 10.0 and c.k == 5
    # The spread says the places disagree: the lone tile 500 m away widens it.
    assert c.spread_m > 150.0
    # One place, or a power so high that the best dominates: the peak is the best tile.
    one = density_position(east[:1], north[:1], scores[:1], sigma_m=50.0)
    assert (one.east_m, one.north_m, one.spread_m) == pytest.approx((500.0, 0.0, 50.0))
    sharp = density_position(east, north, np.array([0.9, 0.3, 0.3, 0.3, 0.3]), sigma_m=50.0)
    assert sharp.east_m == pytest.approx(500.0, abs=1.0)


def test_places_that_agree_give_a_tight_spread():
    rng = np.random.default_rng(0)
    e, n = rng.normal(100, 5, 10), rng.normal(-40, 5, 10)
    c = density_position(e, n, np.full(10, 0.7), sigma_m=20.0)
    assert (c.east_m, c.north_m) == pytest.approx((100.0, -40.0), abs=4.0)
    assert 20.0 <= c.spread_m < 25.0
