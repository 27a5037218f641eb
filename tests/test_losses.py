"""Eq. 1-6 against literal Python-loop implementations of the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clefctl.losses import (au_loss, fer_loss, finetune_loss, name_description_loss,
                            pretrain_loss, sup_con)

TOL = dict(rtol=1e-6, atol=1e-6)      # torch.allclose
APPROX = dict(rel=1e-6, abs=1e-6)    # pytest.approx


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _raw(n: int, d: int, seed: int) -> torch.Tensor:
    """Unnormalised float64 features with varied row norms."""
    g = _gen(seed)
    scale = torch.rand(n, 1, generator=g, dtype=torch.float64) * 5 + 0.2
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale


def _unit(v: torch.Tensor) -> list[list[float]]:
    rows = v.tolist()
    return [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in rows]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _sigmoid(s: float) -> float:
    return 1.0 / (1.0 + math.exp(-s))


# ---- literal reference implementations -------------------------------------------------

def ref_sup_con(anchor, contrast, labels, temperature, rows=None):
    z = _unit(anchor) + _unit(contrast)
    lab = list(labels.tolist()) * 2
    n = anchor.shape[0]
    anchors = list(range(n)) if rows is None else list(range(n))[rows]
    total = 0.0
    for i in anchors:
        denominator = 0.0
        for k in range(2 * n):
            if k != i:
                denominator += math.exp(_dot(z[i], z[k]) / temperature)
        positives = [j for j in range(2 * n) if j != i and lab[j] == lab[i]]
        acc = 0.0
        for j in positives:
            acc += math.log(math.exp(_dot(z[i], z[j]) / temperature) / denominator)
        total += -acc / len(positives)
    return total / len(anchors)


def ref_name_description(desc, names, scale):
    d, n = _unit(desc), _unit(names)
    c = len(d)
    total = 0.0
    for i in range(c):
        denominator = sum(math.exp(_dot(d[i], n[j]) * scale) for j in range(c))
        total += math.log(math.exp(_dot(d[i], n[i]) * scale) / denominator)
    return -total / c


def ref_fer(images, names, targets, weights, scale):
    zi, zn = _unit(images), _unit(names)
    b, c = len(zi), len(zn)
    total = 0.0
    for i in range(b):
        denominator = sum(math.exp(_dot(zi[i], zn[j]) * scale) for j in range(c))
        for k in range(c):
            y = 1.0 if targets[i] == k else 0.0
            if y:
                total += weights[k] * math.log(math.exp(_dot(zi[i], zn[k]) * scale) * y
                                               / denominator)
    return -total / b


def ref_au(images, names, targets, weights, scale, mask):
    zi, zn = _unit(images), _unit(names)
    b, c = len(zi), len(zn)
    total = 0.0
    for i in range(b):
        for k in range(c):
            if mask[i][k] == 0:
                continue
            p = _sigmoid(_dot(zi[i], zn[k]) * scale)
            y = targets[i][k]
            total += weights[k] * y * math.log(p) + (1 - y) * math.log(1 - p)
    return -total / b


# ---- Eq. 1 and 2 -----------------------------------------------------------------------

# repeated labels (0, 2), a label seen once (5: its only positive is its own second view)
LABELS = torch.tensor([0, 2, 0, 5, 2, 2, 0, 7])


def test_sup_con_matches_loop():
    a, c = _raw(8, 5, 1), _raw(8, 5, 2)
    for t in (0.25, 0.07, 1.0):
        got = sup_con(a, c, LABELS, temperature=t)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(ref_sup_con(a, c, LABELS, t), **APPROX)


def test_sup_con_all_labels_distinct_and_all_equal():
    a, c = _raw(5, 4, 3), _raw(5, 4, 4)
    for labels in (torch.arange(5), torch.zeros(5, dtype=torch.long)):
        assert sup_con(a, c, labels).item() == pytest.approx(
            ref_sup_con(a, c, labels, 0.25), **APPROX)


def test_sup_con_single_sample_is_zero():
    # one sample: the anchor's only other row is its own positive, softmax over 1 logit
    loss = sup_con(_raw(1, 3, 5), _raw(1, 3, 6), torch.tensor([4]))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_sup_con_normalises_inputs():
    a, c = _raw(6, 4, 7), _raw(6, 4, 8)
    labels = LABELS[:6]
    assert torch.allclose(sup_con(a, c, labels), sup_con(3.0 * a, 0.5 * c, labels))


def test_sup_con_anchor_rows():
    a, c = _raw(8, 5, 9), _raw(8, 5, 10)
    full = sup_con(a, c, LABELS)
    halves = [sup_con(a, c, LABELS, anchor_rows=slice(r * 4, (r + 1) * 4)) for r in range(2)]
    quarters = [sup_con(a, c, LABELS, anchor_rows=slice(r * 2, (r + 1) * 2)) for r in range(4)]
    assert torch.allclose(torch.stack(halves).mean(), full, **TOL)
    assert torch.allclose(torch.stack(quarters).mean(), full, **TOL)
    # unequal slices: mean over each slice's anchors, matching the loop on those anchors
    part = sup_con(a, c, LABELS, anchor_rows=slice(1, 4))
    assert part.item() == pytest.approx(ref_sup_con(a, c, LABELS, 0.25, slice(1, 4)), **APPROX)
    assert not torch.allclose(part, full)
    with pytest.raises(ValueError):
        sup_con(a, c, LABELS, anchor_rows=slice(8, 10))


def test_sup_con_stable_at_small_temperature():
    a, c = _raw(8, 5, 11).requires_grad_(), _raw(8, 5, 12).requires_grad_()
    loss = sup_con(a.float(), c.float(), LABELS, temperature=1e-3)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(a.grad).all() and torch.isfinite(c.grad).all()


def test_pretrain_loss_is_sum_of_two_sup_con():
    v1, v2, text = _raw(8, 5, 13), _raw(8, 5, 14), _raw(8, 5, 15)
    want = ref_sup_con(v1, v2, LABELS, 0.25) + ref_sup_con(v1, text, LABELS, 0.25)
    assert pretrain_loss(v1, v2, text, LABELS).item() == pytest.approx(want, **APPROX)
    rows = slice(2, 6)
    want_rows = (ref_sup_con(v1, v2, LABELS, 0.25, rows)
                 + ref_sup_con(v1, text, LABELS, 0.25, rows))
    got_rows = pretrain_loss(v1, v2, text, LABELS, anchor_rows=rows)
    assert got_rows.item() == pytest.approx(want_rows, **APPROX)


def test_sup_con_rejects_bad_shapes():
    with pytest.raises(ValueError):
        sup_con(_raw(4, 3, 1), _raw(5, 3, 2), torch.arange(4))
    with pytest.raises(ValueError):
        sup_con(_raw(4, 3, 1), _raw(4, 3, 2), torch.arange(3))


# ---- Eq. 3-6 ---------------------------------------------------------------------------

def test_name_description_matches_loop():
    desc, names = _raw(6, 5, 20), _raw(6, 5, 21)
    for scale in (1.0, 14.3, 100.0):
        got = name_description_loss(desc, names, torch.tensor(scale, dtype=torch.float64))
        assert got.item() == pytest.approx(ref_name_description(desc, names, scale), **APPROX)


FER_TARGETS = torch.tensor([0, 3, 3, 1, 6, 0, 2])
FER_WEIGHTS = torch.tensor([1.0, 2.5, 0.3, 1.0, 4.0, 0.7, 1.9], dtype=torch.float64)


def test_fer_loss_matches_loop():
    images, names = _raw(7, 5, 22), _raw(7, 5, 23)
    scale = torch.tensor(20.0, dtype=torch.float64)
    got = fer_loss(images, names, FER_TARGETS, FER_WEIGHTS, scale)
    want = ref_fer(images, names, FER_TARGETS.tolist(), FER_WEIGHTS.tolist(), 20.0)
    assert got.item() == pytest.approx(want, **APPROX)
    ones = fer_loss(images, names, FER_TARGETS, None, scale)
    assert ones.item() == pytest.approx(
        ref_fer(images, names, FER_TARGETS.tolist(), [1.0] * 7, 20.0), **APPROX)


def test_fer_loss_vs_torch_cross_entropy():
    images, names = _raw(7, 5, 24), _raw(7, 5, 25)
    scale = torch.tensor(30.0, dtype=torch.float64)
    logits = F.normalize(images, dim=1) @ F.normalize(names, dim=1).T * scale
    ours = fer_loss(images, names, FER_TARGETS, FER_WEIGHTS, scale)
    weighted_mean = F.cross_entropy(logits, FER_TARGETS, weight=FER_WEIGHTS)
    assert not torch.allclose(ours, weighted_mean)       # torch divides by sum_i w_{y_i}
    summed = F.cross_entropy(logits, FER_TARGETS, weight=FER_WEIGHTS, reduction="sum")
    assert torch.allclose(ours, summed / len(FER_TARGETS), **TOL)
    unweighted = fer_loss(images, names, FER_TARGETS, torch.ones(7, dtype=torch.float64), scale)
    assert torch.allclose(unweighted, F.cross_entropy(logits, FER_TARGETS), **TOL)


def _au_problem():
    g = _gen(30)
    targets = (torch.rand(6, 5, generator=g) > 0.6).double()
    mask = torch.ones(6, 5, dtype=torch.float64)
    mask[0, 1] = mask[3, 4] = mask[5, 0] = mask[2, 2] = 0
    weights = torch.tensor([0.5, 3.0, 1.0, 2.2, 0.8], dtype=torch.float64)
    return _raw(6, 4, 31), _raw(5, 4, 32), targets, weights, mask


def test_au_loss_matches_loop():
    images, names, targets, weights, mask = _au_problem()
    assert 0 < targets.sum() < targets.numel()
    for scale in (1.0, 5.0, 14.3):
        s = torch.tensor(scale, dtype=torch.float64)
        got = au_loss(images, names, targets, weights, s, mask)
        want = ref_au(images, names, targets.tolist(), weights.tolist(), scale, mask.tolist())
        assert got.item() == pytest.approx(want, **APPROX)
    # the mask matters, and no mask == all ones; None weights == all ones
    s = torch.tensor(10.0, dtype=torch.float64)
    full = au_loss(images, names, targets, weights, s)
    assert full.item() == pytest.approx(
        ref_au(images, names, targets.tolist(), weights.tolist(), 10.0, [[1] * 5] * 6), **APPROX)
    assert not torch.allclose(full, au_loss(images, names, targets, weights, s, mask))
    assert au_loss(images, names, targets, None, s, mask).item() == pytest.approx(
        ref_au(images, names, targets.tolist(), [1.0] * 5, 10.0, mask.tolist()), **APPROX)


def test_au_loss_is_class_sum_over_batch():
    # sum over classes / B == C * elementwise-mean BCE when weights and mask are ones
    images, names, targets, _, _ = _au_problem()
    s = torch.tensor(7.0, dtype=torch.float64)
    logits = F.normalize(images, dim=1) @ F.normalize(names, dim=1).T * s
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(au_loss(images, names, targets, None, s), bce * names.shape[0], **TOL)


def test_au_loss_stable_at_large_scale():
    # image == name direction, scale 1000, target 0: loss is -log(1 - sigmoid(1000)) = 1000
    v = torch.tensor([[1.0, 2.0, 2.0]])
    loss = au_loss(v, v, torch.zeros(1, 1), None, torch.tensor(1000.0))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(1000.0, rel=1e-6)
    loss = au_loss(v, -v, torch.ones(1, 1), None, torch.tensor(1000.0))
    assert loss.item() == pytest.approx(1000.0, rel=1e-6)


def test_finetune_loss():
    l_in, l_dn = torch.tensor(1.5), torch.tensor(0.4)
    assert finetune_loss(l_in, l_dn).item() == pytest.approx((2.0 * 1.5 + 0.4) / 2)
    assert finetune_loss(l_in, l_dn, lam=0.5).item() == pytest.approx((0.5 * 1.5 + 0.4) / 2)


def test_gradients_finite_for_every_input():
    v1, v2, text = (_raw(8, 5, s).requires_grad_() for s in (40, 41, 42))
    names, desc, images = (_raw(n, 5, s).requires_grad_() for n, s in ((7, 43), (7, 44), (6, 45)))
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    g = _gen(46)
    au_targets = (torch.rand(6, 7, generator=g) > 0.5).double()
    mask = torch.ones(6, 7, dtype=torch.float64)
    mask[1, 3] = 0
    weights = torch.rand(7, generator=g, dtype=torch.float64) + 0.5
    fer_targets = torch.tensor([0, 6, 2, 2, 5, 1])
    l_dn = name_description_loss(desc, names, scale.exp())
    total = (pretrain_loss(v1, v2, text, LABELS)
             + finetune_loss(au_loss(images, names, au_targets, weights, scale.exp(), mask), l_dn)
             + finetune_loss(fer_loss(images, names, fer_targets, weights, scale.exp()), l_dn))
    total.backward()
    for t in (v1, v2, text, names, desc, images, scale):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_gradcheck():
    g = _gen(50)
    a, c = _raw(5, 3, 51).requires_grad_(), _raw(5, 3, 52).requires_grad_()
    labels = torch.tensor([0, 1, 0, 2, 1])
    assert torch.autograd.gradcheck(lambda x, y: sup_con(x, y, labels), (a, c))
    images, names = _raw(4, 3, 53).requires_grad_(), _raw(3, 3, 54).requires_grad_()
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    y = (torch.rand(4, 3, generator=g) > 0.5).double()
    m = torch.ones(4, 3, dtype=torch.float64)
    m[2, 1] = 0
    t = torch.tensor([2, 0, 1, 1])
    assert torch.autograd.gradcheck(lambda i, n, s: au_loss(i, n, y, w, s, m),
                                    (images, names, scale))
    assert torch.autograd.gradcheck(lambda i, n, s: fer_loss(i, n, t, w, s),
                                    (images, names, scale))
    assert torch.autograd.gradcheck(lambda i, n, s: name_description_loss(i, n, s),
                                    (_raw(3, 3, 55).requires_grad_(), names, scale))
