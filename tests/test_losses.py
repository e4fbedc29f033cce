"""Each loss against a value computed by hand on a tiny case."""
import math

import pytest

torch = pytest.importorskip("torch")

from skyfix.train.losses import MHNW, InfoNCE, PartClassifiers, SoftTriplet, make_loss  # noqa: E402


def _unit(deg):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in deg])


def _d(a_deg, b_deg):
    return 2 * abs(math.sin(math.radians(a_deg - b_deg) / 2))  # chord between unit vectors


def test_infonce_two_pairs():
    drone, sat = _unit([0, 90]), _unit([0, 90])
    loss = InfoNCE(init_temperature=1.0)(drone, sat)  # scale 1: logits are cosines
    # Each row: log(1 + e^{0 - 1}) for cos(0)=1 positive, cos(90)=0 negative.
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)


def test_soft_triplet_two_pairs():
    drone, sat = _unit([0, 60]), _unit([10, 90])
    alpha = 2.0
    d = [[_d(0, 10), _d(0, 90)], [_d(60, 10), _d(60, 90)]]
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    d2s = (sp(alpha * (d[0][0] - d[0][1])) + sp(alpha * (d[1][1] - d[1][0]))) / 2
    s2d = (sp(alpha * (d[0][0] - d[1][0])) + sp(alpha * (d[1][1] - d[0][1]))) / 2
    assert SoftTriplet(alpha)(drone, sat).item() == pytest.approx((d2s + s2d) / 2, rel=1e-5)


def test_mhnw_weights_multiple_hard_negatives():
    # Anchor 0 (0 deg): its positive is at 80 deg, both negatives (10, 40 deg) are closer: two
    # hard negatives, weighted (eq. 3.2-3.3). Anchors 1 (15 deg) and 2 (45 deg) sit next to
    # their positives (10, 40 deg): no hard negative, eq. 3.1 with the nearest negative.
    drone, sat = _unit([0, 15, 45]), _unit([80, 10, 40])
    alpha = 3.0
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    dap = _d(0, 80)
    D = [dap - _d(0, 10), dap - _d(0, 40)]
    anchor0 = sum(Di / max(D) * sp(alpha * Di) for Di in D)
    anchor1 = sp(alpha * (_d(15, 10) - min(_d(15, 80), _d(15, 40))))
    anchor2 = sp(alpha * (_d(45, 40) - min(_d(45, 80), _d(45, 10))))
    expected = (anchor0 + anchor1 + anchor2) / (2 + 1 + 1)
    assert MHNW(alpha, symmetric=False)(drone, sat).item() == pytest.approx(expected, rel=1e-5)


def test_part_classifiers_loss_is_mean_cross_entropy():
    heads = PartClassifiers(parts=2, channels=3, n_classes=4)
    for h in heads.heads:
        torch.nn.init.zeros_(h.weight)
        torch.nn.init.zeros_(h.bias)
    feats = torch.randn(5, 6)
    labels = torch.tensor([0, 1, 2, 3, 0])
    # Zero classifiers give uniform probabilities: CE = log(4) for every part.
    assert heads(feats, labels).item() == pytest.approx(math.log(4), rel=1e-6)


def test_losses_are_low_for_matching_and_high_for_swapped_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    for name in ("infonce", "soft_triplet", "mhnw"):
        loss = make_loss(name)
        assert loss(x, x).item() < loss(x, x.roll(1, dims=0)).item()


def test_unknown_loss_refused():
    from skyfix.errors import SkyfixError
    with pytest.raises(SkyfixError, match="unknown loss"):
        make_loss("arcface")


def test_orientation_loss_hand_values():
    from skyfix.train.towers import orientation_loss
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    rot = torch.tensor([0.0, 0.0, float("nan")])  # the third has no known rotation: ignored
    # 1 - cos(0) = 0 and 1 - cos(90 deg) = 1: mean 0.5.
    assert orientation_loss(pred, rot).item() == pytest.approx(0.5, abs=1e-6)
