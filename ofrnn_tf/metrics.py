"""Multi-label metrics in the CNN-RNN / ML-GCN convention (the paper's Tables 1–2).

Label-set metrics compare a predicted label set with the true one. With, per class k,
``Nc`` (images where k is predicted and true), ``Np`` (predicted) and ``Ng`` (true)::

    O-P = ΣNc / ΣNp        O-R = ΣNc / ΣNg        O-F1 = 2·OP·OR / (OP + OR)
    C-P = mean_k Nc/Np     C-R = mean_k Nc/Ng     C-F1 = 2·CP·CR / (CP + CR)

C-F1 is the harmonic mean of the two class means, not the mean of per-class F1.

Conventions this module fixes (the papers leave them open):

* A class that is never predicted (``Np = 0``) has precision 0 and still counts in
  C-P's mean, which runs over **every** class (as ML-GCN's code does).
* A class with no positive image (``Ng = 0``) has no defined recall and is left out
  of C-R's mean (ML-GCN divides by zero there). It stays in C-P's mean: predicting it
  at all is a false positive, never predicting it gives precision 0 as above.
* Every 0/0 (no prediction at all, no positive at all, P + R = 0) gives 0, never NaN.
* All results are percentages in [0, 100].

Ranking metrics use per-class scores (probabilities or logits; only the order
matters). AP is non-interpolated: the mean, over the positives, of the precision at
each positive's rank. Images are ranked by descending score with a stable sort, so
equal scores keep image order (the lower image index ranks first). mAP is the mean AP
over the classes with at least one positive; the others are skipped.

Top-k metrics predict, for every image, the k highest-scoring classes (ties to the
lower class index) and report the label-set metrics of that prediction under the
keys ``"C-P@3"``, ``"O-F1@3"``, ... (the suffix is ``@k``).

Example:
    >>> y = np.array([[1, 0], [0, 1]])
    >>> label_set_metrics(y, y)["C-F1"]
    100.0
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Optional, Sequence

import numpy as np

LABEL_SET_KEYS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1")
MAP_KEY = "mAP"
SIZE_SPLIT_KEYS = ("AP-small", "AP-large")

# Tolerance on area fractions a little above 1 (boxes rounded past the image border).
_AREA_TOLERANCE = 1e-3


# -- validation ----------------------------------------------------------------------
def _check_2d(name: str, a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, C]; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape} (need N ≥ 1 images, C ≥ 1 classes)")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype} (shape {arr.shape})")
    return arr


def _first_bad(name: str, arr: np.ndarray, bad: np.ndarray, what: str) -> ValueError:
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    index = ", ".join(str(i) for i in where)
    return ValueError(
        f"{name} (shape {arr.shape}) must {what}; {int(bad.sum())} entries do not, "
        f"first at [{index}] = {arr[where].item()!r}")


def _check_nd(name: str, a, ndim: int) -> np.ndarray:
    if ndim == 2:
        return _check_2d(name, a)
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N]; got shape {arr.shape}")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    return arr


def _as_binary(name: str, a, ndim: int = 2) -> np.ndarray:
    """Returns a boolean copy of a 0/1 (or bool) array, or raises naming `name`."""
    arr = _check_nd(name, a, ndim)
    if arr.dtype == bool:
        return arr.copy()
    bad = (arr != 0) & (arr != 1)  # NaN is bad too
    if bad.any():
        raise _first_bad(name, arr, bad, "hold only 0 and 1")
    return arr == 1


def binary_labels(name: str, a) -> np.ndarray:
    """`a`, label sets `[N, C]` of 0 and 1 (or bool), as a boolean array, or a ValueError
    naming `name` and its first other entry: for a caller that scores many predictions
    against the same true sets, which the metrics then take as they are, unchecked again."""
    return _as_binary(name, a)


def _as_scores(name: str, a, ndim: int = 2) -> np.ndarray:
    arr = _check_nd(name, a, ndim).astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise _first_bad(name, arr, bad, "be finite")
    return arr


def _check_same_shape(reference_name: str, reference: np.ndarray, **others: np.ndarray) -> None:
    for name, arr in others.items():
        if arr.shape != reference.shape:
            raise ValueError(
                f"{name} has shape {arr.shape} but {reference_name} has shape "
                f"{reference.shape}; they must match")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def _harmonic(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


# -- label-set metrics ---------------------------------------------------------------
def class_counts(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class counts ``(Nc, Np, Ng)``, each int64 [C].

    Args:
        y_true: [N, C] in {0, 1}, the true label sets.
        y_pred: [N, C] in {0, 1}, the predicted label sets.
    """
    t = _as_binary("y_true", y_true)
    p = _as_binary("y_pred", y_pred)
    _check_same_shape("y_true", t, y_pred=p)
    nc = np.sum(t & p, axis=0, dtype=np.int64)
    np_ = np.sum(p, axis=0, dtype=np.int64)
    ng = np.sum(t, axis=0, dtype=np.int64)
    return nc, np_, ng


def label_set_metrics(y_true, y_pred) -> dict[str, float]:
    """C-P, C-R, C-F1, O-P, O-R, O-F1 (percent) of predicted label sets.

    C-P averages over every class (never-predicted classes count with precision 0);
    C-R averages over the classes with at least one positive (see the module
    docstring); every 0/0 gives 0.

    Args:
        y_true: [N, C] in {0, 1}.
        y_pred: [N, C] in {0, 1}.

    Returns:
        ``{"C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1"}`` → float in [0, 100].
    """
    nc, np_, ng = class_counts(y_true, y_pred)
    per_class_p = np.divide(nc, np_, out=np.zeros(nc.shape, np.float64), where=np_ > 0)
    has_pos = ng > 0
    cp = float(per_class_p.mean())
    cr = float((nc[has_pos] / ng[has_pos]).mean()) if has_pos.any() else 0.0
    op = _ratio(nc.sum(), np_.sum())
    orec = _ratio(nc.sum(), ng.sum())
    values = (cp, cr, _harmonic(cp, cr), op, orec, _harmonic(op, orec))
    return {k: 100.0 * v for k, v in zip(LABEL_SET_KEYS, values)}


def top_k_predictions(scores, k: int = 3, min_score: Optional[float] = None) -> np.ndarray:
    """The k highest-scoring classes of every image as a multi-hot matrix.

    Ties go to the lower class index. ML-GCN's published top-3 numbers additionally
    drop top-k classes whose score is below 0 (logits); pass ``min_score`` (0 for
    logits, 0.5 for probabilities) to reproduce that; the default keeps exactly k.

    Args:
        scores: [N, C] finite scores.
        k: labels per image, 1 ≤ k ≤ C.
        min_score: if set, a top-k class is kept only when its score ≥ min_score.

    Returns:
        int64 [N, C] in {0, 1}.
    """
    s = _as_scores("scores", scores)
    n, c = s.shape
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= c:
        raise ValueError(f"k must be an integer in [1, {c}] for scores of shape {s.shape}; got {k!r}")
    if min_score is not None and not np.isfinite(min_score):
        raise ValueError(f"min_score must be a finite number or None; got {min_score!r}")
    # Stable ascending sort of -score = descending score, equal scores in index order.
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    out = np.zeros((n, c), dtype=np.int64)
    rows = np.arange(n)[:, None]
    keep = np.ones(top.shape, dtype=bool) if min_score is None else s[rows, top] >= min_score
    out[rows, top] = keep.astype(np.int64)
    return out


def top_k_metrics(y_true, scores, k: int = 3,
                  min_score: Optional[float] = None) -> dict[str, float]:
    """Label-set metrics of `top_k_predictions`, keys suffixed ``@k`` (e.g. ``"O-F1@3"``)."""
    t = _as_binary("y_true", y_true)
    s = _as_scores("scores", scores)
    _check_same_shape("y_true", t, scores=s)
    pred = top_k_predictions(s, k=k, min_score=min_score)
    return {f"{key}@{k}": v for key, v in label_set_metrics(t, pred).items()}


# -- ranking metrics -----------------------------------------------------------------
def _ap(hits_sorted: np.ndarray) -> float:
    n_pos = int(hits_sorted.sum())
    if n_pos == 0:
        return 0.0
    ranks = np.arange(1, hits_sorted.size + 1, dtype=np.float64)
    precision_at = np.cumsum(hits_sorted) / ranks
    return float(precision_at[hits_sorted].sum() / n_pos)


def average_precision(y_true_k, scores_k) -> float:
    """Non-interpolated average precision of one class, in [0, 1].

    The images are ranked by descending score (stable sort: equal scores keep their
    order, the lower index first); AP is the mean over the positives of the precision
    at each positive's rank. A class with no positive gives 0.0.

    Args:
        y_true_k: [N] in {0, 1}.
        scores_k: [N] finite scores.
    """
    t = _as_binary("y_true_k", y_true_k, ndim=1)
    s = _as_scores("scores_k", scores_k, ndim=1)
    _check_same_shape("y_true_k", t, scores_k=s)
    order = np.argsort(-s, kind="stable")
    return _ap(t[order])


def per_class_average_precision(y_true, scores) -> np.ndarray:
    """AP in [0, 1] of every class, float64 [C]; NaN marks classes with no positive."""
    t = _as_binary("y_true", y_true)
    s = _as_scores("scores", scores)
    _check_same_shape("y_true", t, scores=s)
    order = np.argsort(-s, axis=0, kind="stable")
    hits = np.take_along_axis(t, order, axis=0)
    return np.array([_ap(hits[:, j]) if hits[:, j].any() else np.nan
                     for j in range(t.shape[1])])


def mean_average_precision(y_true, scores) -> float:
    """mAP (percent): mean AP over the classes with at least one positive.

    Classes with no positive are skipped; if no class has one, the result is 0.0.

    Args:
        y_true: [N, C] in {0, 1}.
        scores: [N, C] finite scores.
    """
    ap = per_class_average_precision(y_true, scores)
    ap = ap[~np.isnan(ap)]
    return 100.0 * float(ap.mean()) if ap.size else 0.0


def size_split_average_precision(y_true, scores, label_areas,
                                 small_area: float) -> dict[str, float]:
    """mAP (percent) on small and on large objects.

    For class k and size s ∈ {small, large}, AP is computed over the images where k
    is absent (all negatives) plus the positives of size s; positives of the other
    size are left out. A positive is small when ``label_areas < small_area`` and large
    otherwise (``≥``), both compared in float32. Each mean runs over the classes with
    at least one positive of that size; with none at all, that AP is None (not defined:
    0.0 read as a model that misses every object of the size).

    Args:
        y_true: [N, C] in {0, 1}.
        scores: [N, C] finite scores.
        label_areas: [N, C]; at positives, the area of the class's largest object as
            a fraction of the image area, in [0, 1]. Entries at negatives are ignored
            (e.g. -1). A positive with an unknown area (negative value) is an error.
        small_area: the threshold area fraction, in (0, 1].

    Returns:
        ``{"AP-small": float or None, "AP-large": float or None}``.
    """
    t = _as_binary("y_true", y_true)
    s = _as_scores("scores", scores)
    a = _check_2d("label_areas", label_areas).astype(np.float64)
    _check_same_shape("y_true", t, scores=s, label_areas=a)
    if (isinstance(small_area, bool) or not isinstance(small_area, numbers.Real)
            or not 0.0 < float(small_area) <= 1.0):
        raise ValueError(f"small_area must be an image-area fraction in (0, 1]; got {small_area!r}")

    unknown = t & ~(a >= 0)  # negative or NaN
    if unknown.any():
        i, j = (int(x) for x in np.argwhere(unknown)[0])
        raise ValueError(
            f"label_areas: {int(unknown.sum())} positive labels have an unknown object area "
            f"(negative or NaN), first at image {i}, class {j}; size-split AP needs the "
            f"object area of every positive")
    too_big = t & (a > 1.0 + _AREA_TOLERANCE)
    if too_big.any():
        i, j = (int(x) for x in np.argwhere(too_big)[0])
        raise ValueError(
            f"label_areas: {int(too_big.sum())} positive labels have an area above 1, first "
            f"at image {i}, class {j} = {a[i, j].item()!r}; areas must be fractions of the image "
            f"area, not pixels")

    # Compared at float32, the precision areas are stored in (TFRecords): an object
    # whose area is the threshold exactly stays large however its stored area rounded.
    small = t & (a.astype(np.float32) < np.float32(small_area))
    large = t & ~small
    result = {}
    for key, subset in zip(SIZE_SPLIT_KEYS, (small, large)):
        aps = []
        for j in range(t.shape[1]):
            if not subset[:, j].any():
                continue
            keep = ~t[:, j] | subset[:, j]
            order = np.argsort(-s[keep, j], kind="stable")
            aps.append(_ap(t[keep, j][order]))
        result[key] = 100.0 * float(np.mean(aps)) if aps else None
    return result


# -- everything at once --------------------------------------------------------------
def evaluate_all(y_true, y_pred, scores, label_areas=None, small_area: Optional[float] = None,
                 k: int = 3) -> dict[str, float]:
    """Label-set metrics, top-k metrics, mAP and (with areas) size-split AP.

    Args:
        y_true: [N, C] in {0, 1}, the true label sets.
        y_pred: [N, C] in {0, 1}, the decoded label sets (e.g. beam search output).
        scores: [N, C] per-class scores for ranking (top-k and AP).
        label_areas: optional [N, C] area fractions (see `size_split_average_precision`).
        small_area: the small/large threshold; required exactly when `label_areas` is given.
        k: the top-k variant (default 3, as in CNN-RNN and ML-GCN).

    Returns:
        One flat dict: ``LABEL_SET_KEYS``, the same keys with ``@k``, ``"mAP"``, and
        ``"AP-small"``/``"AP-large"`` when `label_areas` is given.
    """
    if (label_areas is None) != (small_area is None):
        raise ValueError("label_areas and small_area must be given together "
                         f"(got label_areas={'set' if label_areas is not None else None}, "
                         f"small_area={small_area!r})")
    t = _as_binary("y_true", y_true)
    p = _as_binary("y_pred", y_pred)
    s = _as_scores("scores", scores)
    _check_same_shape("y_true", t, y_pred=p, scores=s)
    out = dict(label_set_metrics(t, p))
    out.update(top_k_metrics(t, s, k=k))
    out[MAP_KEY] = mean_average_precision(t, s)
    if label_areas is not None:
        out.update(size_split_average_precision(t, s, label_areas, small_area))
    return out


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        return "n/a" if math.isnan(v) else f"{v:.1f}"
    return str(value).replace("|", "\\|")


def format_table(rows: Mapping[str, Mapping[str, object]],
                 columns: Optional[Sequence[str]] = None, name_header: str = "run") -> str:
    """A markdown table: one row per named run, one column per metric.

    Floats are printed with one decimal, integers as they are, missing entries as
    ``n/a``.

    Args:
        rows: run name → metrics dict (e.g. `evaluate_all` output), in display order.
        columns: the metric keys to show, in order; by default every key of every row
            in the order first seen.
        name_header: the header of the first (run name) column.

    Returns:
        The table, lines joined by newlines, without a trailing newline.
    """
    if not rows:
        raise ValueError("format_table needs at least one row")
    if columns is None:
        seen: dict[str, None] = {}
        for metrics in rows.values():
            seen.update((key, None) for key in metrics)
        columns = list(seen)
    columns = list(columns)
    header = [name_header] + columns
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(columns)) + "|"]
    for name, metrics in rows.items():
        cells = [_cell(name)] + [_cell(metrics.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
