"""The paper's Tables 1–2 on the embedded benchmark, over data seeds, with honest baselines.

For every benchmark mode (`independent`: items drawn independently; `scenes`: the
scene mode, where labels co-occur) and every seed (the canvases' data seed, which is
also the weight seed), this trains one run per row with `train.py`, each with its own
budget and early stopping on validation, thresholds chosen on validation:

==============================  ===============================================================
row                             run
==============================  ===============================================================
baseline (0.5), baseline (τ)    ``--config=paper --model.variant=baseline``: the paper's M_map
                                (linear layer on mean-pooled maps) trained to convergence,
                                scored at a fixed 0.5 (the usual rule) and at a validation threshold
spatial head                    ``--model.variant=baseline --model.head_kernel_size=3
                                --model.head_units=256`` and ``--stage1_flags``: the
                                strongest non-recurrent head measured (an MLP over each
                                position's 3×3 neighbourhood, log-sum-exp pooling), trained
                                to the end of its cosine decay
no_attention, frequency_first,  ``--config=paper --model.variant=...``: the paper's ablations
rare_first
order_free (paper)              ``--config=paper``: the paper's model
spatial head + label context    the same head with ``--model.label_context_units=256
                                --model.label_context_training=joint``: its logits corrected
                                from all of its class probabilities, the context trained with
                                the head in stage 1 (no decoder), the strongest simple
                                alternative where labels co-occur
order_free (main job)           the main job's model (the mode's preset: `benchmark`, or
                                `benchmark_scenes`, which adds the label context) with
                                ``--stage1_flags``: its M_map trained as the spatial head
                                row's
==============================  ===============================================================

It prints and appends to benchmarks/RESULTS.md the per-seed numbers, mean ± std over
seeds, and the differences that the paper and the project claim, each with the spread
of its per-seed values. A seed's table also gives each run's choices on validation: τ,
and the weight of M_map's v_prob in the ranking scores that mAP and AP-small read (1: a
decoder row ranks by M_map alone; tables written before 2026-12-08 do not show them). Finished runs are skipped, so an interrupted table resumes; one
trained with other settings than its row's command gives is refused.

    python benchmarks/paper_table.py --root=runs/table                     # 3 seeds, 2 modes
    python benchmarks/paper_table.py --root=runs/table --seeds=0 --modes=independent
    python benchmarks/paper_table.py --root=runs/table9 --modes=scenes --seeds=0 \
        --runs=spatial_head,main_job --stage1_flags=--stage1.epochs=40,--stage1.patience=5

The rows whose stage 1 is the spatial head's get ``--stage1_flags``, by default the
whole of a 20-epoch cosine decay (``--stage1.epochs=20 --stage1.patience=0``). The
tables of RESULTS.md written before 2026-12-03 ran it for up to 40 epochs with patience
5, which stops it while its learning rate is still high; the last command above runs
that budget again (docs/experiments.md, "The stage-1 budget of the comparison").

About 30 minutes per mode and seed on 2 CPU cores once the features are cached (each
new seed first builds its canvases and features: about 5 minutes).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import difference, mean_std, publish  # noqa: E402
from ofrnn_tf.metrics import format_table  # noqa: E402
from ofrnn_tf.run_dir import RunDir  # noqa: E402

FLAGS = flags.FLAGS
# --root (where the runs go), --seeds, --modes, --append and --cache_dir, as the scripts
# that read these runs take them.
table_runs.define_flags()
flags.adopt_module_key_flags(table_runs)
flags.DEFINE_list("runs", None, "Only these runs, by folder name (default: all of them): "
                  "only they are trained and tabulated; the rows (and claims) of the others "
                  "are left out of the table, as are those of unfinished runs with --notrain.")
flags.DEFINE_bool("train", True, "Train missing runs; --notrain tabulates only finished ones.")
# The spatial head's stage 1, here and under the main job: the whole of a 20-epoch cosine
# decay (up to 40 epochs with patience 5 stopped it while the learning rate was high).
flags.DEFINE_list("stage1_flags", ["--stage1.epochs=20", "--stage1.patience=0"],
                  "train.py flags appended to the rows whose stage 1 is the spatial head's "
                  "(spatial head, with label context, main job): its budget. "
                  "--stage1_flags=--stage1.epochs=40,--stage1.patience=5 is that of the "
                  "tables written before 2026-12-03.")
flags.DEFINE_list("extra", [], "train.py flags every row gets, after its own, where it reads "
                  "them (e.g. tiny sizes for a trial: --data.num_train=64,--stage2.epochs=1; "
                  "the rows of M_map alone take no --stage2.*).")

MODES = {"independent": "none", "scenes": "outfits"}
# The main job's model in each mode is its preset's (the scene mode's has a label context).
MAIN_JOB_PRESETS = {"independent": "benchmark", "scenes": "benchmark_scenes"}
# Row name → (run folder, train.py flags). The two baseline rows share one run.
RUNS = {
    "baseline": ["--config=paper", "--model.variant=baseline"],
    # The strongest simple alternative in both modes: the head with a 3x3 kernel.
    "spatial_head": ["--model.variant=baseline", "--model.head_kernel_size=3",
                     "--model.head_units=256"],
    # ... and where labels co-occur, that head with a label context trained along with it.
    "spatial_head_context": ["--model.variant=baseline", "--model.head_kernel_size=3",
                             "--model.head_units=256", "--model.label_context_units=256",
                             "--model.label_context_training=joint"],
    "no_attention": ["--config=paper", "--model.variant=no_attention"],
    "frequency_first": ["--config=paper", "--model.variant=frequency_first"],
    "rare_first": ["--config=paper", "--model.variant=rare_first"],
    "order_free_paper": ["--config=paper"],
    # The main job's model (its stage-1 budget, the spatial head row's: --stage1_flags).
    "main_job": [],
}
# The rows that get --stage1_flags.
_SPATIAL_STAGE1 = ("spatial_head", "spatial_head_context", "main_job")
ROWS = ("baseline (0.5)", "baseline (τ)", "spatial head", "spatial head + label context",
        "no_attention", "frequency_first",
        "rare_first", "order_free (paper)", "order_free (main job)")
COLUMNS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "mAP", "AP-small", "AP-large",
           "train s")
# A seed's table also shows what each run chose on validation: τ, and the weight of
# M_map's v_prob in the ranking scores (1: mAP and AP-small are M_map's own ranking).
CHOICES = {"τ": "tau", "v_prob weight": "score_mix"}
# (claim, row, reference row, required margin on C-F1 and O-F1, also not below on mAP and
# AP-small)
_NOT_BELOW_THE_SIMPLER = ("main job vs spatial head + label context", "order_free (main job)",
                          "spatial head + label context", 0.0, True)
CLAIMS = {
    "independent": [("paper's order_free vs calibrated baseline", "order_free (paper)",
                     "baseline (τ)", 5.0, False),
                    ("main job vs spatial head", "order_free (main job)", "spatial head", 3.0,
                     True), _NOT_BELOW_THE_SIMPLER],
    "scenes": [("paper's order_free vs calibrated baseline", "order_free (paper)",
                "baseline (τ)", 5.0, False),
               ("main job vs spatial head", "order_free (main job)", "spatial head", 5.0, True),
               _NOT_BELOW_THE_SIMPLER],
}


def run(mode: str, seed: int, name: str) -> RunDir | None:
    """The finished run folder of one row, training it first if asked; None if not run
    (or not among `--runs`)."""
    if FLAGS.runs and name not in FLAGS.runs:
        return None
    run_dir = RunDir(table_runs.run_path(mode, seed, name))
    command = train_command(mode, seed, name)
    remedy = ("give the flags it was trained with (--stage1_flags, --extra) or another --root"
              + ("" if not FLAGS.train else ", or remove the run to train it again"))
    if not table_runs.finished(run_dir, command[2:], remedy):
        if not FLAGS.train:
            return None
        table_runs.run_child(command, cwd=Path(__file__).resolve().parents[1])
    return run_dir


def train_command(mode: str, seed: int, name: str) -> list[str]:
    """The ``train.py`` command of one row: its own flags, then the `--extra` it reads."""
    preset = [f"--config={MAIN_JOB_PRESETS[mode]}"] if name == "main_job" else []
    own = [*preset, *RUNS[name], *(FLAGS.stage1_flags if name in _SPATIAL_STAGE1 else []),
           f"--data.seed={seed}", f"--train.seed={seed}", f"--data.scenes={MODES[mode]}",
           f"--runtime.cache_dir={FLAGS.cache_dir}"]
    return [sys.executable, "train.py", f"--workdir={table_runs.run_path(mode, seed, name)}",
            *own, *table_runs.read_by(own, FLAGS.extra)]


def rows_of(mode: str, seed: int) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """Every row's test metrics (and training time) for one mode and seed, and which
    runs ran on which data (`{setup: [run, ...]}`, see `setup`)."""
    out, setups = {}, {}
    for name in RUNS:
        run_dir = run(mode, seed, name)
        if run_dir is None:
            continue
        metrics = run_dir.load_metrics("test")
        with open(run_dir.timing_file("train")) as f:
            seconds = round(json.load(f).get("training", 0.0))
        metrics["train s"] = seconds
        if name == "baseline":
            out["baseline (0.5)"] = dict(metrics["at_fixed_0.5"], **{"train s": seconds})
            out["baseline (τ)"] = metrics
        else:
            out[{"spatial_head": "spatial head", "order_free_paper": "order_free (paper)",
                 "spatial_head_context": "spatial head + label context",
                 "main_job": "order_free (main job)"}.get(name, name)] = metrics
        setups.setdefault(setup(run_dir), []).append(name)
    return {row: out[row] for row in ROWS if row in out}, setups


def setup(run_dir: RunDir) -> str:
    """The data a run was trained and tested on, from its run.json: the benchmark's
    canvases and the backbone's feature maps."""
    config, facts = run_dir.load()
    data = config.data
    sizes = (f"{data.num_train:,} / {data.num_val:,} / {data.num_test:,} canvases"
             if data.dataset == "fashion_canvases" else f"data set {data.dataset}")
    shape = "×".join(map(str, facts.feature_shape))
    return (f"{sizes}; {config.features.backbone} {config.features.layer} maps, layer "
            f"{facts.feature_layer}, {shape}")


def setup_text(setups: dict[str, list[str]]) -> str:
    """What `setups` (`{setup: [run, ...]}`) says of a mode's runs: the one setup they all
    share, or each setup with its runs."""
    if len(setups) == 1:
        return next(iter(setups))
    return "the runs differ: " + "; ".join(f"{', '.join(dict.fromkeys(names))}: {text}"
                                           for text, names in setups.items())


def summary(per_seed: dict[int, dict]) -> str:
    table = {}
    for row in ROWS:
        seeds = [s for s in per_seed if row in per_seed[s]]
        if not seeds:  # a table of some rows only (--runs)
            continue
        table[f"{row} ({len(seeds)} seeds)"] = {
            column: mean_std([per_seed[s][row][column] for s in seeds]) for column in COLUMNS}
    return format_table(table, columns=list(COLUMNS), name_header="row")


def claims(mode: str, per_seed: dict[int, dict]) -> list[str]:
    """Each claim's differences (mean ± std over seeds) and whether its goal is met."""
    lines = []
    for text, row, reference, margin, ranking in CLAIMS[mode]:
        seeds = [s for s in per_seed if row in per_seed[s] and reference in per_seed[s]]
        if not seeds:
            lines.append(f"- {text}: not run.")
            continue
        parts, met = [], True
        for column in ("C-F1", "O-F1", "mAP", "AP-small"):
            diffs = [difference(per_seed[s][row][column], per_seed[s][reference][column])
                     for s in seeds]
            diffs = [d for d in diffs if d is not None]  # AP-small of a split without one
            if not diffs:
                parts.append(f"{column} n/a")
                continue
            mean = statistics.mean(diffs)
            if len(diffs) == 1:  # one seed: no spread to compare with
                parts.append(f"{column} {mean:+.1f}")
            else:
                spread = statistics.stdev(diffs)
                noise = " (inside the noise)" if abs(mean) <= spread else ""
                parts.append(f"{column} {mean:+.1f} ± {spread:.1f}{noise}")
            if column in ("C-F1", "O-F1"):
                met &= mean >= margin
            elif ranking:
                met &= mean >= 0.0
        goal = f"≥ +{margin:g} C-F1 and O-F1" + (", not below on mAP and AP-small" if ranking else "")
        which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        lines.append(f"- {text}, {which}: {', '.join(parts)}; "
                     f"goal ({goal}): {'met' if met else 'not met'}.")
    return lines


def _choice(value) -> str | None:
    """A value chosen on validation, with the two decimals of its grid (None: n/a)."""
    return None if value is None else f"{float(value):.2f}"


def mode_section(mode: str, seeds: list[int]) -> str:
    """One mode's markdown: its runs trained (if asked) and tabulated over `seeds`; a usage
    error when none of them is finished."""
    per_seed, setups = {}, {}
    for seed in seeds:
        per_seed[seed], seed_setups = rows_of(mode, seed)
        for text, names in seed_setups.items():
            setups.setdefault(text, []).extend(names)
    if not any(per_seed.values()):
        folders = ", ".join(os.path.join(FLAGS.root, mode, f"seed{s}") for s in seeds)
        which = f" of --runs={','.join(FLAGS.runs)}" if FLAGS.runs else ""
        raise app.UsageError(f"--root={FLAGS.root}: no finished runs{which} under {folders}"
                             + (" (--notrain tabulates finished runs only)"
                                if not FLAGS.train else ""))
    lines = [f"Benchmark mode `{mode}` ({setup_text(setups)}); seeds "
             f"{', '.join(map(str, seeds))} (data and weights). Test split; every threshold "
             f"chosen on validation except `baseline (0.5)`, fixed. Mean ± std "
             f"over seeds:", "", summary(per_seed), ""]
    lines += claims(mode, per_seed)
    lines += ["", "A difference is called inside the noise when its mean over seeds is no "
                  "larger than the spread (std) of its per-seed values.", "", "Per seed:", ""]
    for seed, rows in per_seed.items():
        if not rows:
            continue
        shown = {row: {**metrics, **{column: _choice(metrics.get(key))
                                     for column, key in CHOICES.items()}}
                 for row, metrics in rows.items()}
        lines += [f"Seed {seed}:", "", format_table(shown, columns=[*COLUMNS, *CHOICES],
                                                    name_header="row"), ""]
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = sorted(set(FLAGS.modes) - set(MODES))
    if unknown:
        raise app.UsageError(f"--modes takes {sorted(MODES)}; got {unknown}")
    unknown = sorted(set(FLAGS.runs or ()) - set(RUNS))
    if unknown:
        raise app.UsageError(f"--runs takes {', '.join(RUNS)}; got {unknown}")
    # The train.py children run from the repository root.
    table_runs.make_absolute("root", "cache_dir")
    seeds = [int(s) for s in FLAGS.seeds]
    for mode in FLAGS.modes:  # every row's command refused or taken before any trains
        for name in FLAGS.runs or RUNS:
            table_runs.train_config(train_command(mode, seeds[0], name)[2:])
    # Every mode first, so that one failing publishes none of them.
    sections = {mode: mode_section(mode, seeds) for mode in FLAGS.modes}
    for mode, text in sections.items():
        publish(f"Paper table, benchmark mode `{mode}`", text, FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
