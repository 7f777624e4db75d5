"""Choosing the beam-search stopping threshold τ on a validation split (the paper's "Testing").

The paper stops a prediction path when its probability (Eq. 11) falls below a
threshold "determined by cross-validation". `calibrate_decoding` decodes the
validation set once with τ = 0, recording the best beam of every step
(`decode_all_steps`), and `calibrate_outputs` then grid-searches τ with `select_for_threshold`,
which is exact (see `ofrnn_tf.decoding.beam_search`). For the `baseline` variant (no
decoder) the grid runs over the one threshold on `v_prob` shared by every class. The
same pass chooses the weight of M_map's scores in the ranking scores
(`choose_score_mix`). Training's validation and the run's `calibration.json` both
choose through `calibrate_outputs`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ofrnn_tf.config.experiment import OBJECTIVES
from ofrnn_tf.decoding.beam_search import (
    STEP_KEYS, decode_dataset, labels_to_multi_hot, make_decoder, mix_scores, select_baseline,
    select_for_threshold, top_classes)
from ofrnn_tf.metrics import binary_labels, label_set_metrics, mean_average_precision


def default_grid() -> np.ndarray:
    """0, 41 log-spaced probabilities from 1e-4 to 0.9, and 0.05, 0.10, …, 0.95."""
    grid = np.concatenate([[0.0], np.logspace(-4, np.log10(0.9), 41), np.linspace(0.05, 0.95, 19)])
    return np.unique(np.round(grid, 10))


def objective_value(metrics: Mapping[str, float], objective: str) -> float:
    """`mean_f1` = (C-F1 + O-F1) / 2, `c_f1` = C-F1, `o_f1` = O-F1 (percent)."""
    if objective == "mean_f1":
        return 0.5 * (metrics["C-F1"] + metrics["O-F1"])
    if objective == "c_f1":
        return metrics["C-F1"]
    if objective == "o_f1":
        return metrics["O-F1"]
    raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")


def _check_grid(grid: Optional[Sequence[float]]) -> np.ndarray:
    values = default_grid() if grid is None else np.asarray(list(grid), np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"grid must be a non-empty list of thresholds; got {grid!r}")
    bad = ~((values >= 0.0) & (values <= 1.0))
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise ValueError(f"grid[{i}] = {values[i]} is not a probability in [0, 1]")
    return np.unique(values)


SCORE_MIX_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def predictions_at(outputs: Mapping[str, np.ndarray], tau: float, min_labels: int = 1,
                   score_mix: float = 0.0):
    """`(y_pred [N, C] multi-hot, scores [N, C])` at threshold τ, read from an
    `all_steps` pass (or, for `baseline`, from its `v_prob`)."""
    if all(key in outputs for key in STEP_KEYS):
        selected = select_for_threshold(outputs, tau, min_labels, score_mix)
        num_classes = np.asarray(outputs["v_prob"]).shape[-1]
        return labels_to_multi_hot(selected["labels"], num_classes), selected["scores"]
    return select_baseline(outputs["v_prob"], tau, min_labels), np.asarray(outputs["v_prob"])


def _label_sets_by_threshold(outputs: Mapping[str, np.ndarray], min_labels: int
                             ) -> Callable[[float], np.ndarray]:
    """τ → the label sets `[N, C]` (bool) that `predictions_at` gives at τ, for a search
    over many τ: without the ranking scores, which τ does not change, and with what
    does not depend on τ (the baseline's top classes) computed once."""
    if all(key in outputs for key in STEP_KEYS):
        num_classes = np.asarray(outputs["v_prob"]).shape[-1]
        return lambda tau: labels_to_multi_hot(
            select_for_threshold(outputs, tau, min_labels, scores=False)["labels"],
            num_classes, dtype=bool)
    v_prob = np.asarray(outputs["v_prob"], np.float32)
    top = top_classes(v_prob, min_labels)
    return lambda tau: (v_prob >= np.float32(tau)) | top


def _tie_level(value: float) -> float:
    """A metric rounded so that values equal in exact arithmetic compare equal.

    The same F1 reached from different counts (5/9 and 5/6 against 1/2 and 1) can
    differ in its last bit, which would then decide a tie instead of the stated rule.
    """
    return round(float(value), 9)


def choose_score_mix(outputs: Mapping[str, np.ndarray], grid: Sequence[float] = SCORE_MIX_GRID
                     ) -> Tuple[float, List[Tuple[float, float]]]:
    """The weight of M_map's v_prob in the ranking scores that maximises validation mAP.

    The grid holds 1 (M_map's own scores), so the chosen scores rank the validation
    images at least as well as M_map does; ties go to the larger weight. The `baseline`
    variant has only v_prob: its weight is 1.

    Returns:
        `(best_mix, [(mix, mAP), ...])`.
    """
    if not all(key in outputs for key in STEP_KEYS):
        return 1.0, [(1.0, mean_average_precision(outputs["y_true"], outputs["v_prob"]))]
    y_true = binary_labels("y_true", outputs["y_true"])  # checked once, not at every mix
    v_prob = np.asarray(outputs["v_prob"], np.float32)
    path_scores = np.asarray(outputs["path_scores"], np.float32)
    # Mixed in float32, as evaluation and the served graph mix them: near-ties would
    # otherwise rank differently from how the chosen weight is then used.
    table = [(float(mix), mean_average_precision(
        y_true, mix_scores(v_prob, path_scores, np.float32(mix)))) for mix in grid]
    best = max(range(len(table)), key=lambda i: (_tie_level(table[i][1]), table[i][0]))
    return table[best][0], table


def calibrate_from_outputs(outputs: Mapping[str, np.ndarray], *, min_labels: int = 1,
                           objective: str = "mean_f1", grid: Optional[Sequence[float]] = None,
                           ) -> Tuple[float, List[Tuple[float, float]]]:
    """Grid search of τ over decoded validation outputs.

    Args:
        outputs: `decode_dataset` results with `y_true`: for a decoder variant, of a
            τ = 0 run with `all_steps=True`; for `baseline`, any run (only `v_prob`
            is used).
        min_labels, objective, grid: see `calibrate_decoding`.

    Returns:
        `(best_tau, [(tau, objective), ...])` in increasing τ; ties go to the smallest τ.
    """
    objective_value({"C-F1": 0.0, "O-F1": 0.0}, objective)  # validates the name
    if "y_true" not in outputs:
        raise ValueError("outputs lack 'y_true': the validation dataset must yield 'labels'")
    y_true = binary_labels("y_true", outputs["y_true"])  # checked once, not at every τ
    decoder_mode = all(key in outputs for key in STEP_KEYS)
    if not decoder_mode and "v_prob" not in outputs:
        raise ValueError(f"outputs need either {STEP_KEYS} (decode with all_steps=True, τ = 0) "
                         "or 'v_prob' (baseline)")
    label_sets_at = _label_sets_by_threshold(outputs, min_labels)
    table = []
    for tau in _check_grid(grid):
        y_pred = label_sets_at(float(tau))
        table.append((float(tau), objective_value(label_set_metrics(y_true, y_pred), objective)))
    best = max(range(len(table)), key=lambda i: (_tie_level(table[i][1]), -i))
    return table[best][0], table


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What one validation pass chooses, with the grids it chose from."""

    tau: float  # the stopping threshold (baseline: the threshold on v_prob)
    score_mix: float  # the weight of M_map's v_prob in the ranking scores
    tau_grid: List[Tuple[float, float]]  # (τ, objective) in increasing τ
    score_mix_grid: List[Tuple[float, float]]  # (weight, validation mAP)


def calibrate_outputs(outputs: Mapping[str, np.ndarray], *, min_labels: int = 1,
                      objective: str = "mean_f1", grid: Optional[Sequence[float]] = None
                      ) -> Calibration:
    """τ (`calibrate_from_outputs`) and the score mix (`choose_score_mix`) chosen from
    one decoded validation pass (`decode_all_steps`)."""
    tau, table = calibrate_from_outputs(outputs, min_labels=min_labels, objective=objective,
                                        grid=grid)
    mix, mix_table = choose_score_mix(outputs)
    return Calibration(tau=tau, score_mix=mix, tau_grid=table, score_mix_grid=mix_table)


def calibrate_decoding(model, dataset, *, beam_size: int, max_steps: int, min_labels: int = 1,
                       objective: str = "mean_f1", grid: Optional[Sequence[float]] = None,
                       jit_compile: bool = False, progress: bool = True) -> Calibration:
    """Decodes a validation dataset once and chooses τ and the score mix on it.

    Args:
        model: a built `OrderFreeRNN`.
        dataset: `tf.data` batches of dicts with `features` and multi-hot `labels`.
        beam_size, max_steps, min_labels: the decoding settings τ is chosen for.
        objective: `mean_f1` (mean of C-F1 and O-F1, default), `c_f1` or `o_f1`.
        grid: candidate τ values in [0, 1]; default `default_grid()`.
        jit_compile: decode with XLA.
        progress: a progress bar on stderr while decoding.
    """
    objective_value({"C-F1": 0.0, "O-F1": 0.0}, objective)  # before the decoding pass
    outputs = decode_all_steps(model, dataset, beam_size=beam_size, max_steps=max_steps,
                               min_labels=min_labels, jit_compile=jit_compile, progress=progress)
    return calibrate_outputs(outputs, min_labels=min_labels, objective=objective, grid=grid)


def decode_all_steps(model, dataset, *, beam_size: int, max_steps: int, min_labels: int = 1,
                     jit_compile: bool = False, progress: bool = True) -> dict:
    """One decoding pass recording every step, from which any τ can be read
    (`select_for_threshold`); for `baseline` a plain pass (only `v_prob` is needed). The
    attention maps are left out: no metric reads them, and validation, calibration and
    the test pass would keep them for every image."""
    settings = dict(beam_size=beam_size, max_steps=max_steps, min_labels=min_labels,
                    all_steps=model.uses_decoder, jit_compile=jit_compile)
    key = (id(model), tuple(sorted(settings.items())))
    if key not in _LAST_DECODER:  # the entry keeps its model alive, so its id is its own
        _LAST_DECODER.clear()
        _LAST_DECODER[key] = make_decoder(model, threshold=0.0, attention=False, **settings)
    return decode_dataset(_LAST_DECODER[key], dataset, progress=progress)


# The decoder of the last `decode_all_steps` call, kept for the next: validation decodes
# after every epoch, and a new `tf.function` each time would trace again (TensorFlow
# warns of retracing after five). One entry, so it keeps at most one model alive.
_LAST_DECODER: dict = {}
