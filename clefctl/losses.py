"""The CLEF losses, paper Eq. 1-6 (Zhang et al., ICCV 2023, section 3).

One function per concept:

* :func:`sup_con` - Eq. 1, the cross-modal supervised contrastive loss (pre-training);
* :func:`pretrain_loss` - Eq. 2, image-image plus image-activity-text ``sup_con``;
* :func:`name_description_loss` - Eq. 3, label descriptions against label names;
* :func:`fer_loss` - Eq. 4, class-weighted softmax over label names (expressions);
* :func:`au_loss` - Eq. 5, class-weighted sigmoid over label names (action units);
* :func:`finetune_loss` - Eq. 6, ``(lam * L_IN + L_DN) / 2``.

Every function L2-normalises its feature inputs itself, so raw encoder outputs can be
passed. ``temperature`` is the fixed epsilon of Eq. 1; ``logit_scale`` is the learnable
multiplier 1/tau of Eq. 3-5 (the *exponentiated* CLIP logit scale, a tensor so that it
receives a gradient).

Multi-process training: see :mod:`clefctl.distributed` for the two exact recipes
(``anchor_rows`` with a gradient-carrying gather, or the full loss on every rank scaled by
the world size). Eq. 3-6 need no gathering: each rank computes them on its own images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sup_con",
    "pretrain_loss",
    "name_description_loss",
    "fer_loss",
    "au_loss",
    "fer_loss_from_logits",
    "au_loss_from_logits",
    "finetune_loss",
]


def _check_features(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (rows, dim), got {shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")



def _check_images_and_names(images: Tensor, names: Tensor) -> tuple[int, int]:
    """Both (N, D) with the same D; returns (number of images B, number of classes C)."""
    _check_features("images", images)
    _check_features("names", names)
    if images.shape[1] != names.shape[1]:
        raise ValueError(f"images and names have different feature sizes "
                         f"({images.shape[1]} vs {names.shape[1]})")
    return images.shape[0], names.shape[0]

def _as_scale(logit_scale: Tensor | float, like: Tensor) -> Tensor:
    scale = torch.as_tensor(logit_scale, device=like.device)
    if scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(scale.shape)}")
    return scale.reshape(()).to(like.dtype)


def _class_weights(class_weights: Tensor | None, num_classes: int, like: Tensor) -> Tensor:
    if class_weights is None:
        return torch.ones(num_classes, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(class_weights, device=like.device).to(like.dtype)
    if w.shape != (num_classes,):
        raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(w.shape)}")
    return w


def sup_con(anchor: Tensor, contrast: Tensor, labels: Tensor, temperature: float = 0.25, *,
            anchor_rows: slice | None = None) -> Tensor:
    """Cross-modal supervised contrastive loss, paper Eq. 1.

    ``anchor`` and ``contrast`` are (n, d); row i of both belongs to sample i with label
    ``labels[i]`` (e.g. the activity/task index). Let Z = [anchor; contrast] (2n rows, the
    labels duplicated). For each *anchor* row i (only the first n rows of Z, as Eq. 1 sums
    i = 1..n) the logits are z_i . z_k / temperature over every row k != i of Z, and the
    positives P(i) are the rows k != i with the same label (at least the sample's own row
    in ``contrast``, so a label seen once in the batch still has one positive). The
    anchor's loss is the mean over P(i) of -log softmax_k; the result is the mean over
    anchors. Deviation from the paper's notation: Eq. 1 sums over anchors, this averages
    them (a constant factor n, which keeps the loss independent of the batch size); there
    is no extra ``temperature / base_temperature`` factor.

    ``anchor_rows`` restricts the anchors to ``range(n)[anchor_rows]`` (all 2n rows stay
    in the contrast set) and returns the mean over those anchors only. In DDP, each rank
    passes the gathered global batch with ``anchor_rows=clefctl.distributed.local_slice(m)``:
    with equal shards, the mean over ranks equals the single-process loss (see
    :mod:`clefctl.distributed` for the gradient side).

    Example:
        >>> import torch
        >>> view1, view2 = torch.randn(8, 16), torch.randn(8, 16)  # two augmentations
        >>> activity = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
        >>> loss = sup_con(view1, view2, activity)
        >>> half = sup_con(view1, view2, activity, anchor_rows=slice(0, 4))
        >>> other = sup_con(view1, view2, activity, anchor_rows=slice(4, 8))
        >>> torch.allclose((half + other) / 2, loss)
        True
    """
    _check_features("anchor", anchor)
    _check_features("contrast", contrast)
    if anchor.shape != contrast.shape:
        raise ValueError(f"anchor {tuple(anchor.shape)} and contrast {tuple(contrast.shape)} "
                         "must have the same shape")
    n = anchor.shape[0]
    labels = torch.as_tensor(labels, device=anchor.device)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if float(temperature) <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")

    rows = torch.arange(n, device=anchor.device)
    if anchor_rows is not None:
        if not isinstance(anchor_rows, slice):
            raise ValueError(f"anchor_rows must be a slice, got {type(anchor_rows).__name__}")
        rows = rows[anchor_rows]
        if rows.numel() == 0:
            raise ValueError(f"anchor_rows {anchor_rows} selects no anchor out of {n}")

    z = F.normalize(torch.cat([anchor, contrast], dim=0), dim=1)
    all_labels = torch.cat([labels, labels])
    logits = z[rows] @ z.T / temperature                      # (a, 2n)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(rows.numel(), device=z.device), rows] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    log_prob = torch.log_softmax(logits, dim=1)
    positive = (all_labels[rows].unsqueeze(1) == all_labels.unsqueeze(0)) & ~is_self
    positive_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob))
    per_anchor = -positive_log_prob.sum(dim=1) / positive.sum(dim=1).to(log_prob.dtype)
    return per_anchor.mean()


def pretrain_loss(view1: Tensor, view2: Tensor, activity_text: Tensor, labels: Tensor,
                  temperature: float = 0.25, *, anchor_rows: slice | None = None) -> Tensor:
    """Pre-training loss, paper Eq. 2: ``L_II + L_IA``.

    ``sup_con(view1, view2, labels) + sup_con(view1, activity_text, labels)``: image
    features of two augmentations (n, d), and ``activity_text`` (n, d) whose row i is the
    text feature of sample i's activity description. Each term is a mean over anchors (the
    rows of ``view1``, or those in ``anchor_rows``), so the result is a sum of two means.

    Example:
        >>> import torch
        >>> v1, v2, text = torch.randn(6, 16), torch.randn(6, 16), torch.randn(6, 16)
        >>> loss = pretrain_loss(v1, v2, text, torch.tensor([0, 0, 1, 1, 2, 3]))
        >>> bool(loss > 0)
        True
    """
    return (sup_con(view1, view2, labels, temperature, anchor_rows=anchor_rows)
            + sup_con(view1, activity_text, labels, temperature, anchor_rows=anchor_rows))


def name_description_loss(descriptions: Tensor, names: Tensor, logit_scale: Tensor) -> Tensor:
    """Label description vs label name contrastive loss, paper Eq. 3 (``L_DN``).

    ``descriptions`` and ``names`` are (C, d), row c = class c. The logits are
    ``description_c . name_j * logit_scale`` over the C names; the loss is the mean over the
    C classes of -log softmax at j = c (cross entropy with target c for description c).

    Example:
        >>> import torch
        >>> names, descriptions = torch.randn(12, 16), torch.randn(12, 16)
        >>> loss = name_description_loss(descriptions, names, torch.tensor(100.0))
    """
    _check_features("descriptions", descriptions)
    _check_features("names", names)
    if descriptions.shape != names.shape:
        raise ValueError(f"descriptions {tuple(descriptions.shape)} and names "
                         f"{tuple(names.shape)} must have the same shape")
    d = F.normalize(descriptions, dim=1)
    n = F.normalize(names, dim=1)
    logits = d @ n.T * _as_scale(logit_scale, d)
    target = torch.arange(d.shape[0], device=d.device)
    return F.cross_entropy(logits, target)


def fer_loss(images: Tensor, names: Tensor, targets: Tensor, class_weights: Tensor | None,
             logit_scale: Tensor) -> Tensor:
    """Facial-expression image vs label-name loss, paper Eq. 4 (``L_IN^fe``).

    ``images`` (B, d), ``names`` (C, d), ``targets`` (B,) class indices, ``class_weights``
    (C,) or None (all ones). With s_ic = image_i . name_c * logit_scale the loss is
    -(1/B) sum_i w_{y_i} log softmax_c(s_i)[y_i]: a sum over the batch divided by B, *not*
    torch's weighted-mean ``cross_entropy(weight=w)`` (which divides by sum_i w_{y_i}); the
    two agree when all weights are 1.

    Example:
        >>> import torch
        >>> images, names = torch.randn(4, 16), torch.randn(7, 16)
        >>> targets = torch.tensor([0, 3, 3, 6])
        >>> weights = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 1.0, 3.0])
        >>> loss = fer_loss(images, names, targets, weights, torch.tensor(100.0))
    """
    b, c = _check_images_and_names(images, names)
    targets = torch.as_tensor(targets, device=images.device).long()
    if targets.shape != (b,):
        raise ValueError(f"targets must have shape ({b},), got {tuple(targets.shape)}")
    if targets.min() < 0 or targets.max() >= c:
        raise ValueError(f"targets must be class indices in [0, {c}), got "
                         f"{int(targets.min())}..{int(targets.max())}")
    i = F.normalize(images, dim=1)
    n = F.normalize(names, dim=1)
    return fer_loss_from_logits(i @ n.T * _as_scale(logit_scale, i), targets, class_weights)


def fer_loss_from_logits(logits: Tensor, targets: Tensor, class_weights: Tensor | None) -> Tensor:
    """The core of Eq. 4 on given logits (B, C): -(1/B) sum_i w_{y_i} log softmax(logits_i)[y_i].

    :func:`fer_loss` feeds it image-name similarities; the ablation without text (Table 6,
    "I" rows: image encoder + linear classifier) feeds it a linear head's logits.
    """
    b, c = logits.shape
    targets = torch.as_tensor(targets, device=logits.device).long()
    w = _class_weights(class_weights, c, logits)
    picked = torch.log_softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return -(w[targets] * picked).sum() / b


def au_loss(images: Tensor, names: Tensor, targets: Tensor, class_weights: Tensor | None,
            logit_scale: Tensor, mask: Tensor | None = None) -> Tensor:
    """Action-unit image vs label-name loss, paper Eq. 5 (``L_IN^au``).

    ``images`` (B, d), ``names`` (C, d), ``targets`` (B, C) in {0, 1}, ``class_weights``
    (C,) or None (all ones), ``mask`` (B, C) or None: 1 = coded, 0 = not coded (such terms
    are left out). With s_ic = image_i . name_c * logit_scale the loss is
    -(1/B) sum_i sum_c mask_ic [w_c y_ic log sigmoid(s_ic) + (1 - y_ic) log(1 - sigmoid(s_ic))],
    computed with ``logsigmoid`` (stable for large scales). Note: the *sum* over classes
    divided by B only, as in the paper; it is C times the per-element mean of BCE.

    Example:
        >>> import torch
        >>> images, names = torch.randn(4, 16), torch.randn(12, 16)
        >>> targets = (torch.rand(4, 12) > 0.7).float()
        >>> mask = torch.ones(4, 12); mask[0, 5] = 0  # AU 5 of image 0 not coded
        >>> loss = au_loss(images, names, targets, None, torch.tensor(100.0), mask)
    """
    b, c = _check_images_and_names(images, names)
    i = F.normalize(images, dim=1)
    n = F.normalize(names, dim=1)
    y = torch.as_tensor(targets, device=i.device).to(i.dtype)
    if y.shape != (b, c):
        raise ValueError(f"targets must have shape ({b}, {c}), got {tuple(y.shape)}")
    if mask is None:
        m = torch.ones_like(y)
    else:
        m = torch.as_tensor(mask, device=i.device).to(i.dtype)
        if m.shape != (b, c):
            raise ValueError(f"mask must have shape ({b}, {c}), got {tuple(m.shape)}")
    return au_loss_from_logits(i @ n.T * _as_scale(logit_scale, i), y, class_weights, m)


def au_loss_from_logits(logits: Tensor, targets: Tensor, class_weights: Tensor | None,
                        mask: Tensor | None = None) -> Tensor:
    """The core of Eq. 5 on given logits s (B, C): -(1/B) sum_i sum_c mask_ic [w_c y log sigmoid(s)
    + (1 - y) log(1 - sigmoid(s))]. Used by :func:`au_loss` and by the linear-head ablation."""
    b, c = logits.shape
    y = torch.as_tensor(targets, device=logits.device).to(logits.dtype)
    m = torch.ones_like(y) if mask is None else torch.as_tensor(mask, device=logits.device).to(logits.dtype)
    w = _class_weights(class_weights, c, logits)
    # log(1 - sigmoid(s)) = logsigmoid(-s); multiply by the mask via where so that a
    # masked-out element never contributes (not even a NaN from an infinite logit).
    terms = w * y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)
    terms = torch.where(m != 0, terms * m, torch.zeros_like(terms))
    return -terms.sum() / b


def finetune_loss(l_in: Tensor, l_dn: Tensor, lam: float = 2.0) -> Tensor:
    """Fine-tuning loss, paper Eq. 6: ``(lam * L_IN + L_DN) / 2``.

    ``l_in`` is :func:`fer_loss` or :func:`au_loss`, ``l_dn`` is
    :func:`name_description_loss`; ``lam`` is the paper's lambda.

    Example:
        >>> import torch
        >>> float(finetune_loss(torch.tensor(1.0), torch.tensor(3.0), lam=2.0))
        2.5
    """
    return (lam * l_in + l_dn) / 2.0
