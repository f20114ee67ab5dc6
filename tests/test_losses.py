"""Losses against literal float64 references written here (loops / numpy, never the module under test).

Values are compared directly; gradients (torch.autograd) against central finite differences of the
same references, in float64 and float32.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellcls.errors import LossError, RegistryError
from cellcls.losses import create_loss, hard_negative_count, loss_names

# ------------------------------------------------------------------------------------------- references


def ref_logsig(x):
    """log sigmoid(x) of an array, float64, stable."""
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))


def ref_logsig_scalar(x):
    """log sigmoid(x) of one number, stable."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_bce_term(x, t, w=1.0):
    return -(w * t * ref_logsig_scalar(x) + (1.0 - t) * ref_logsig_scalar(-x))


def ref_bce(x, t, pos_weight=None):
    """torch's BCEWithLogitsLoss: -[w t log p + (1 - t) log(1 - p)], mean over all terms."""
    if x.shape[0] == 0:
        return 0.0
    w = np.ones(x.shape[1]) if pos_weight is None else np.asarray(pos_weight)
    return float(np.mean(-(w * t * ref_logsig(x) + (1.0 - t) * ref_logsig(-x))))


def ref_focal_terms(x, t, gamma):
    """The 2019 winner's focal loss terms, in their max_val / log-exp form (hard targets)."""
    max_val = np.clip(-x, 0.0, None)
    loss = x - x * t + max_val + np.log(np.exp(-max_val) + np.exp(-x - max_val))
    invprobs = ref_logsig(-x * (t * 2.0 - 1.0))
    return np.exp(invprobs * gamma) * loss


def ref_focal_2019(x, t, gamma=2.0):
    """2019 focal loss: terms summed over classes, mean over the batch."""
    if x.shape[0] == 0:
        return 0.0
    return float(ref_focal_terms(x, t, gamma).sum(axis=1).mean())


def ref_focal_soft(x, t, gamma=2.0):
    """Expected 2019 focal loss when each label is drawn as Bernoulli(t)."""
    if x.shape[0] == 0:
        return 0.0
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    terms = t * ref_focal_terms(x, ones, gamma) + (1.0 - t) * ref_focal_terms(x, zeros, gamma)
    return float(terms.sum(axis=1).mean())


def ref_lovasz_hinge(x, y):
    """Berman's binary Lovasz hinge of one list of pixels (logits x, labels y in {0, 1})."""
    if len(x) == 0:
        return 0.0
    errors = [1.0 - x[i] * (2.0 * y[i] - 1.0) for i in range(len(x))]
    order = sorted(range(len(x)), key=lambda i: -errors[i])
    positives = sum(y)
    seen_pos = seen_neg = 0.0
    previous = loss = 0.0
    for i in order:
        seen_pos += y[i]
        seen_neg += 1.0 - y[i]
        jaccard = 1.0 - (positives - seen_pos) / (positives + seen_neg)
        loss += max(errors[i], 0.0) * (jaccard - previous)
        previous = jaccard
    return loss


def ref_lovasz(x, t):
    n, c = x.shape
    if n == 0:
        return 0.0
    columns = x.T.tolist()
    labels = (t >= 0.5).astype(np.float64).T.tolist()
    straight = sum(ref_lovasz_hinge(columns[j], labels[j]) for j in range(c)) / c
    flipped = sum(ref_lovasz_hinge([-v for v in columns[j]], [1.0 - v for v in labels[j]]) for j in range(c)) / c
    return (straight + flipped) / 2.0


def ref_hard_log(x, t):
    n, c = x.shape
    if n == 0:
        return 0.0
    x, t = x.tolist(), t.tolist()
    total = 0.0
    for j in range(c):
        pos = [i for i in range(n) if t[i][j] > 0]
        neg = [i for i in range(n) if t[i][j] <= 0]
        k = min(len(neg), len(pos) + max(2, int(0.5 * len(neg))), int(0.7 * len(neg)) + 2)
        hard = sorted(neg, key=lambda i: -x[i][j])[:k]
        chosen = pos + hard
        total += sum(ref_bce_term(x[i][j], t[i][j]) for i in chosen) / len(chosen)
    return total / c


def ref_bestfitting(x, t):
    return 0.5 * ref_focal_2019(x, t) + 0.5 * ref_lovasz(x, t) + 0.5 * ref_hard_log(x, t)


def ref_logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def ref_arcface(cos, labels, s=30.0, m=0.5, easy_margin=False, plain_weight=1.0, scale_plain=False):
    n = cos.shape[0]
    if n == 0:
        return 0.0
    margin_ce = plain_ce = 0.0
    for i in range(n):
        row = [float(v) for v in cos[i]]
        y = int(labels[i])
        c = row[y]
        sine = math.sqrt(max(0.0, 1.0 - c * c))
        phi = c * math.cos(m) - sine * math.sin(m)
        if easy_margin:
            phi = phi if c > 0 else c
        else:
            phi = phi if c > math.cos(math.pi - m) else c - math.sin(math.pi - m) * m
        z = [s * v for v in row]
        z[y] = s * phi
        margin_ce += ref_logsumexp(z) - z[y]
        p = [v * s for v in row] if scale_plain else row
        plain_ce += ref_logsumexp(p) - p[y]
    return (margin_ce / n + plain_weight * plain_ce / n) / (1.0 + plain_weight)


def fd_grad(ref, x, *args, h=1e-6, **kwargs):
    """Central finite differences of a float64 reference."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (ref(up, *args, **kwargs) - ref(down, *args, **kwargs)) / (2 * h)
    return grad


# ----------------------------------------------------------------------------------------------- helpers


def value_and_grad(loss, x, second, dtype):
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    st = torch.as_tensor(second) if second.dtype.kind in "iu" else torch.tensor(second, dtype=dtype)
    value = loss(xt, st)
    value.backward()
    assert value.dtype == dtype and value.shape == ()
    return value.item(), xt.grad.double().numpy()


TOL = {torch.float64: (1e-9, 1e-6), torch.float32: (1e-5, 1e-4)}


def assert_matches(loss, ref, x, second, dtype, **ref_kwargs):
    """Value and gradient of ``loss`` at x (rounded to dtype) equal the reference's, both finite."""
    x = x.astype(np.float32).astype(np.float64) if dtype == torch.float32 else x
    value, grad = value_and_grad(loss, x, second, dtype)
    want = ref(x, second, **ref_kwargs)
    want_grad = fd_grad(ref, x, second, **ref_kwargs)
    rtol, grad_rtol = TOL[dtype]
    scale = max(1.0, abs(want))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx(want, rel=rtol, abs=rtol * scale)
    np.testing.assert_allclose(grad, want_grad, rtol=grad_rtol, atol=grad_rtol * scale / max(1, x.shape[0]))


def multilabel_case(kind, seed=0):
    """(logits (N, 19), hard targets) covering the edge cases of a batch."""
    rng = np.random.default_rng(seed)
    n = {"n1": 1, "n90": 120}.get(kind, 8)
    x = rng.normal(0.0, 2.0, (n, 19))
    t = (rng.random((n, 19)) < 0.3).astype(np.float64)
    t[:, 0] = 0.0  # a class with no positives in the batch
    t[:, 1] = 1.0  # a class with only positives
    if kind == "saturated":
        x = rng.choice([-1.0, 1.0], x.shape) * rng.uniform(100.0, 500.0, x.shape)
    if kind == "n90":  # a class with 90 negatives, where 0.7 * 90 rounds down in floating point
        t[:, 2] = 0.0
        t[:30, 2] = 1.0
    return x, t


CASES = ["random", "saturated", "n1", "n90"]
DTYPES = [torch.float64, torch.float32]

# ------------------------------------------------------------------------------------------- factory


def test_unknown_name_raises_registry_error_listing_choices():
    with pytest.raises(RegistryError) as info:
        create_loss("focall")
    for name in ["arcface", "bce", "bestfitting2019", "focal", "hard_log", "lovasz", "sum"]:
        assert name in str(info.value)
    assert set(loss_names()) >= {"bce", "focal", "lovasz", "hard_log", "bestfitting2019", "sum", "arcface"}


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(LossError, match="gama.*takes: gamma"):
        create_loss("focal", gama=1.0)
    with pytest.raises(LossError, match="no options"):
        create_loss("lovasz", gamma=1.0)
    with pytest.raises(LossError, match="gamma"):
        create_loss("focal", gamma=-1.0)


@pytest.mark.parametrize("name", ["bce", "focal", "lovasz", "hard_log", "bestfitting2019"])
def test_wrong_shapes_and_dtypes_name_both(name):
    loss = create_loss(name)
    with pytest.raises(LossError, match=r"\(4, 19\).*\(4, 18\)"):
        loss(torch.zeros(4, 19), torch.zeros(4, 18))
    with pytest.raises(LossError, match=r"\(19,\).*\(19,\)"):
        loss(torch.zeros(19), torch.zeros(19))
    with pytest.raises(LossError, match="int64"):
        loss(torch.zeros(4, 19), torch.zeros(4, 19, dtype=torch.int64))
    with pytest.raises(LossError, match="floating"):
        loss(torch.zeros(4, 19, dtype=torch.int64), torch.zeros(4, 19))


def test_arcface_wrong_shapes_and_dtypes_name_both():
    loss = create_loss("arcface")
    with pytest.raises(LossError, match=r"\(4, 10\).*\(5,\)"):
        loss(torch.zeros(4, 10), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(LossError, match="float32.*labels.long"):
        loss(torch.zeros(4, 10), torch.zeros(4))
    with pytest.raises(LossError, match=r"\(4, 10\).*\(4, 10\)"):
        loss(torch.zeros(4, 10), torch.zeros(4, 10, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------- bce


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", CASES[:3])
def test_bce_matches_reference_and_torch(kind, dtype):
    x, t = multilabel_case(kind)
    assert_matches(create_loss("bce"), ref_bce, x, t, dtype)
    xt, tt = torch.tensor(x, dtype=dtype), torch.tensor(t, dtype=dtype)
    assert torch.allclose(create_loss("bce")(xt, tt), torch.nn.BCEWithLogitsLoss()(xt, tt))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_soft_targets_and_pos_weight(dtype):
    rng = np.random.default_rng(1)
    x, t = rng.normal(0, 3, (6, 19)), rng.random((6, 19))
    pos_weight = list(rng.uniform(0.5, 4.0, 19))
    assert_matches(create_loss("bce"), ref_bce, x, t, dtype)
    assert_matches(create_loss("bce", pos_weight=pos_weight), ref_bce, x, t, dtype, pos_weight=pos_weight)
    with pytest.raises(LossError, match="pos_weight has 3 entries"):
        create_loss("bce", pos_weight=[1.0, 2.0, 3.0])(torch.zeros(2, 19), torch.zeros(2, 19))


# -------------------------------------------------------------------------------------------- focal


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", CASES[:3])
def test_focal_hard_targets_equal_the_2019_formula(kind, dtype):
    x, t = multilabel_case(kind)
    assert_matches(create_loss("focal"), ref_focal_2019, x, t, dtype, gamma=2.0)  # default gamma is 2
    assert_matches(create_loss("focal", gamma=1.0), ref_focal_2019, x, t, dtype, gamma=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_focal_soft_targets_are_the_expected_focal_loss(dtype):
    rng = np.random.default_rng(2)
    x, t = rng.normal(0, 3, (5, 19)), rng.random((5, 19))
    t[0, :4] = [0.0, 1.0, 0.5, 0.5]
    x[0, 2], x[0, 3] = 0.0, 400.0  # p == t exactly; and a saturated logit with a soft target
    assert_matches(create_loss("focal"), ref_focal_soft, x, t, dtype, gamma=2.0)
    assert_matches(create_loss("focal", gamma=0.5), ref_focal_soft, x, t, dtype, gamma=0.5)


def test_focal_with_gamma_zero_is_bce_summed_over_classes():
    rng = np.random.default_rng(3)
    x, t = torch.tensor(rng.normal(0, 3, (7, 19))), torch.tensor(rng.random((7, 19)))
    focal = create_loss("focal", gamma=0)(x, t)
    assert focal.item() == pytest.approx(19 * torch.nn.BCEWithLogitsLoss()(x, t).item(), rel=1e-12)


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_focal_is_finite_for_logits_in_the_hundreds_float32(gamma):
    x = torch.tensor([[-500.0, -300.0, -100.0, 100.0, 300.0, 500.0]] * 2, requires_grad=True)
    t = torch.tensor([[1.0] * 6, [0.0, 0.0, 0.3, 0.7, 1.0, 1.0]])
    value = create_loss("focal", gamma=gamma)(x, t)
    value.backward()
    assert torch.isfinite(value) and torch.all(torch.isfinite(x.grad))
    # hard target 1 at logit -500: loss 500, gradient -1 (halved by the batch mean of 2 rows)
    assert x.grad[0, 0].item() == pytest.approx(-0.5)


# ------------------------------------------------------------------------------------------- lovasz


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", CASES[:3])
def test_lovasz_matches_reference(kind, dtype):
    x, t = multilabel_case(kind)
    assert_matches(create_loss("lovasz"), ref_lovasz, x, t, dtype)


def test_lovasz_class_without_positives_is_not_skipped():
    # One class, no positives: straight hinge = relu(largest error) = 2.0; the flipped hinge sees
    # three positives with errors (2.0, 1.5, -1.0) and weights (1/3, 1/3, 1/3): 7/6.
    x = torch.tensor([[0.5], [-2.0], [1.0]], dtype=torch.float64)
    value = create_loss("lovasz")(x, torch.zeros(3, 1, dtype=torch.float64))
    assert value.item() == pytest.approx((2.0 + 7.0 / 6.0) / 2.0, rel=1e-12)


def test_lovasz_thresholds_soft_targets_at_one_half():
    rng = np.random.default_rng(4)
    x, t = torch.tensor(rng.normal(0, 2, (6, 19))), torch.tensor(rng.random((6, 19)))
    loss = create_loss("lovasz")
    assert loss(x, t).item() == pytest.approx(loss(x, (t >= 0.5).double()).item(), rel=1e-12)
    assert loss(x, t).item() == pytest.approx(ref_lovasz(x.numpy(), t.numpy()), rel=1e-12)


@pytest.mark.parametrize("name", ["bce", "focal", "lovasz", "hard_log", "bestfitting2019"])
def test_empty_batch_gives_zero_attached_to_the_graph(name):
    x = torch.zeros(0, 19, requires_grad=True)
    value = create_loss(name)(x, torch.zeros(0, 19))
    value.backward()
    assert value.item() == 0.0 and value.requires_grad and x.grad.shape == (0, 19)


# ----------------------------------------------------------------------------------------- hard log


def test_hard_negative_count_formula():
    # (n_pos, n_neg) -> min(n_neg, n_pos + max(2, floor(n_neg / 2)), floor(0.7 n_neg) + 2)
    table = {(0, 0): 0, (5, 0): 0, (0, 1): 1, (0, 3): 2, (0, 10): 5, (3, 10): 8, (10, 10): 9, (1, 4): 3,
             (30, 90): 64}  # 0.7 * 90 = 62.99999999999999 in floating point, as the 2019 code computed it
    n_pos = torch.tensor([p for p, _ in table])
    n_neg = torch.tensor([q for _, q in table])
    assert hard_negative_count(n_pos, n_neg).tolist() == list(table.values())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", CASES)
def test_hard_log_matches_reference(kind, dtype):
    x, t = multilabel_case(kind)
    if kind == "n90":  # finite differences over 120 x 19 entries would be slow: grads on 3 columns
        x, t = x[:, :3], t[:, :3]
    assert_matches(create_loss("hard_log"), ref_hard_log, x, t, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_log_soft_targets_count_as_positives(dtype):
    rng = np.random.default_rng(5)
    x, t = rng.normal(0, 2, (9, 19)), rng.random((9, 19)) * (rng.random((9, 19)) < 0.4)
    assert_matches(create_loss("hard_log"), ref_hard_log, x, t, dtype)


# ------------------------------------------------------------------------------------ combinations


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", CASES[:3])
def test_bestfitting2019_is_half_of_each_term(kind, dtype):
    x, t = multilabel_case(kind)
    assert_matches(create_loss("bestfitting2019"), ref_bestfitting, x, t, dtype)


def test_weighted_sums_from_configs():
    x, t = multilabel_case("random", seed=6)
    want = ref_focal_2019(x, t) + 0.5 * ref_lovasz(x, t)
    xt, tt = torch.tensor(x), torch.tensor(t)
    terms = {"focal": 1.0, "lovasz": 0.5}
    for loss in [create_loss(terms), create_loss("sum", terms=terms), create_loss(**{"name": "sum", "terms": terms}),
                 create_loss({"name": "sum", "terms": terms})]:
        assert loss(xt, tt).item() == pytest.approx(want, rel=1e-10)
    loss = create_loss("sum", terms={"focal": {"weight": 2.0, "gamma": 1.0}, "bce": 0.25, "hard_log": {}})
    want = 2.0 * ref_focal_2019(x, t, gamma=1.0) + 0.25 * ref_bce(x, t) + ref_hard_log(x, t)
    assert loss(xt, tt).item() == pytest.approx(want, rel=1e-10)
    parts = loss.components(xt, tt)
    assert list(parts) == ["focal", "bce", "hard_log"]
    assert parts["bce"].item() == pytest.approx(ref_bce(x, t), rel=1e-10)
    assert create_loss({"name": "focal", "gamma": 1.0})(xt, tt).item() == pytest.approx(
        ref_focal_2019(x, t, gamma=1.0), rel=1e-10)


def test_weighted_sum_config_errors():
    with pytest.raises(RegistryError, match="choose one of"):
        create_loss({"focal": 1.0, "lovaz": 0.5})
    with pytest.raises(LossError, match="weight"):
        create_loss("sum", terms={"focal": -1.0})
    with pytest.raises(LossError, match="non-empty"):
        create_loss("sum", terms={})
    with pytest.raises(LossError, match="not both"):
        create_loss({"focal": 1.0}, terms={"bce": 1.0})


def test_half_precision_logits_are_computed_in_float32():
    x, t = multilabel_case("random", seed=7)
    value = create_loss("bestfitting2019")(torch.tensor(x, dtype=torch.float16), torch.tensor(t))
    assert value.dtype == torch.float32
    x16 = torch.tensor(x, dtype=torch.float16).double().numpy()
    assert value.item() == pytest.approx(ref_bestfitting(x16, t), rel=1e-5)


# ------------------------------------------------------------------------------------------ arcface

TH = math.cos(math.pi - 0.5)  # -0.8776: below it the 2019 code falls back to cos - sin(pi - m) m


def arcface_case(kind, seed=0, n=6, k=10):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-0.99, 0.99, (n, k))
    labels = rng.integers(0, k, n)
    rows = np.arange(n)
    if kind == "fallback":  # true-class cosines below th on half the rows, well away from it
        cos[rows[::2], labels[::2]] = rng.uniform(-0.99, -0.9, len(rows[::2]))
    if kind == "obtuse":  # true-class cosines negative, for easy_margin
        cos[rows[::2], labels[::2]] = rng.uniform(-0.8, -0.1, len(rows[::2]))
    if kind == "n1":
        cos, labels = cos[:1], labels[:1]
    return cos, labels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "fallback", "n1"])
def test_arcface_matches_reference(kind, dtype):
    cos, labels = arcface_case(kind)
    if kind == "fallback":
        assert np.sum(cos[np.arange(len(labels)), labels] < TH - 0.01) >= 3
    assert_matches(create_loss("arcface"), ref_arcface, cos, labels, dtype)  # 2019 defaults: s 30, m 0.5
    assert_matches(create_loss("arcface", s=16.0, m=0.3), ref_arcface, cos, labels, dtype, s=16.0, m=0.3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_arcface_easy_margin_and_weighting_options(dtype):
    cos, labels = arcface_case("obtuse", seed=1)
    assert_matches(create_loss("arcface", easy_margin=True), ref_arcface, cos, labels, dtype, easy_margin=True)
    assert_matches(create_loss("arcface", plain_weight=0.0), ref_arcface, cos, labels, dtype, plain_weight=0.0)
    assert_matches(create_loss("arcface", scale_plain=True), ref_arcface, cos, labels, dtype, scale_plain=True)


def test_arcface_gradient_is_finite_at_unit_cosines():
    cos = torch.tensor([[1.0, 0.2, -1.0], [-1.0, 1.0, 0.0]], requires_grad=True)
    value = create_loss("arcface")(cos, torch.tensor([0, 0], dtype=torch.int32))
    value.backward()
    assert torch.isfinite(value) and torch.all(torch.isfinite(cos.grad))
    assert value.item() == pytest.approx(ref_arcface(cos.detach().double().numpy(), [0, 0]), rel=1e-5)


def test_arcface_empty_batch_is_zero():
    cos = torch.zeros(0, 10, requires_grad=True)
    value = create_loss("arcface")(cos, torch.zeros(0, dtype=torch.int64))
    value.backward()
    assert value.item() == 0.0 and cos.grad.shape == (0, 10)
