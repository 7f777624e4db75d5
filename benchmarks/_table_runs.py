"""What the scripts that read the paper table's runs share: their flags, a run's test (or
validation) split decoded as its test metrics were, and their mean ± std tables."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
from absl import flags

from benchmarks._results import mean_std, publish

from ofrnn_tf import pipeline
from ofrnn_tf.decoding.calibration import decode_all_steps, predictions_at
from ofrnn_tf.metrics import format_table
from ofrnn_tf.run_dir import RunDir


def define_flags() -> None:
    """`--root` (the paper table's runs, ROOT/<mode>/seed<k>/<row>), `--seeds`, `--modes`
    and `--append`; once per process, however many of the scripts are imported."""
    if "root" in flags.FLAGS:
        return
    flags.DEFINE_string("root", "runs/table",
                        "The paper table's runs: ROOT/<mode>/seed<k>/<row>.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Data (and weight) seeds.")
    flags.DEFINE_list("modes", ["independent", "scenes"], "Benchmark modes.")
    flags.DEFINE_bool("append", True, "Append the table to benchmarks/RESULTS.md.")


def decoded_split(run_dir: RunDir, split: str = "test"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """`(y_true, y_pred at the run's τ, per-class scores, facts)` on the test split (or
    `split`), decoded and selected as the run's test metrics were (M_map's v_prob for the
    head alone, the decoder's mixed scores otherwise)."""
    model, config, facts = run_dir.load_model()
    dataset = pipeline.eval_dataset(pipeline.locate_features(config, facts), facts, split)
    decoding = config.decoding
    calibration = run_dir.calibration(decoding.beam_size)
    outputs = decode_all_steps(model, dataset, beam_size=decoding.beam_size,
                               max_steps=facts.max_steps, min_labels=decoding.min_labels,
                               progress=False)
    y_pred, scores = predictions_at(outputs, calibration["tau"], decoding.min_labels,
                                    calibration.get("score_mix", 0.0))
    return np.asarray(outputs["y_true"], np.int32), y_pred, scores, facts


def run_validation(run_dir: RunDir) -> float:
    """The validation objective of a finished run at its own τ (what chose its τ)."""
    config, _ = run_dir.load()
    calibration = run_dir.calibration(config.decoding.beam_size)
    return dict(map(tuple, calibration["grid"]))[calibration["tau"]]


def mean_std_rows(per_seed: Sequence[Mapping[str, Mapping[str, float]]],
                  columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """One table from each seed's `{row: {column: value}}`: every row of the first seed's,
    in its order, with each of `columns` it has as "mean ± std" over the seeds."""
    return {row: {column: mean_std([table[row][column] for table in per_seed])
                  for column in columns if column in values}
            for row, values in per_seed[0].items()}


def mode_tables(per_seed: Mapping[int, Mapping[str, Mapping[str, float]]],
                columns: Sequence[str], over: str | None = None,
                over_columns: Sequence[str] = ("C-F1", "O-F1")) -> list[str]:
    """Markdown lines for one mode: the mean ± std table of `per_seed` (`{seed: {row:
    {column: value}}}`); with `over`, every other row's lead over that row (mean ± std
    of the per-seed differences in `over_columns`); then, for more than one seed, each
    seed's own table."""
    seeds = list(per_seed)
    tables = [per_seed[s] for s in seeds]
    lines = [format_table(mean_std_rows(tables, columns), columns=list(columns),
                          name_header="row"), ""]
    if over is not None and len(seeds) > 1:
        leads = {row: {column: mean_std([t[row][column] - t[over][column] for t in tables])
                       for column in over_columns}
                 for row in tables[0] if row != over}
        lines += [f"Lead over `{over}`, mean ± std of the per-seed differences:", "",
                  format_table(leads, columns=list(over_columns), name_header="row"), ""]
    for seed in seeds if len(seeds) > 1 else ():
        seed_table = {row: {column: f"{values[column]:.1f}" for column in columns}
                      for row, values in per_seed[seed].items()}
        lines += [f"Seed {seed}:", "", format_table(seed_table, columns=list(columns),
                                                    name_header="row"), ""]
    return lines


def publish_mode_tables(title: str, note: str,
                        rows_of: Callable[[str, int], Mapping[str, Mapping[str, float]]],
                        columns: Sequence[str]) -> None:
    """One mean ± std table of `rows_of(mode, seed)` over `--seeds` for each of `--modes`,
    after `note`, published under `title`."""
    seeds = [int(s) for s in flags.FLAGS.seeds]
    lines = [f"{note} Mean ± std over seeds {', '.join(map(str, seeds))}.", ""]
    for mode in flags.FLAGS.modes:
        table = mean_std_rows([rows_of(mode, seed) for seed in seeds], columns)
        lines += [f"Mode `{mode}`:", "", format_table(table, columns=list(columns),
                                                      name_header="row"), ""]
    publish(title, "\n".join(lines), flags.FLAGS.append)
