r"""What each part of the main job's decoder is worth, on one seed of the benchmark.

Trains (or reuses) the main job's run and variants that change one thing each, every
one with the main job's budget, thresholds on validation, test split:

- `spatial head (same budget)`: M_map alone, trained as in the main job's stage 1;
- `steps = T_i`, `steps = T_max`: the stage-2 loss over the paper's T_i steps, or all;
- `PLA loss`: Orderless RNN's predicted-label alignment instead of Eq. 8's BCE;
- `stage 2 constant, 6 ep`, `stage 2 constant, 20 ep`: the stage-2 learning rate held at
  1e-3 instead of the cosine decay over 12 epochs, for at most 6 epochs (patience 2, the
  earlier default) or 20 (patience 3);
- `stage 2 cosine, 20 ep`: the cosine decay stretched over 20 epochs instead of 12;
- `LSTM 512, FC 1024`: the decoder twice as wide;
- `overlap penalty (λ = 1)`, `doubly stochastic penalty (λ = 0.1)`: a stage-2 penalty on
  each image's attention summed over its steps, `a_i = Σ_t α_{t,i}`: `max(0, a_i − 1)²`
  (attention does not come back to a position) or Show, Attend and Tell's `(1 − a_i)²`;
- `greedy (K = 1)`: the main job's run decoded with K = 1 (τ calibrated for it).

Besides the metrics, each decoder's test paths (decoded as for its test metrics) give
`peak α`, the mean largest attention weight of a step (100: one position), and `same
spot`, the share of consecutive steps whose attention peaks at the same position.

    python benchmarks/decoder_ablations.py --root=runs/ablations --seed=0
    python benchmarks/decoder_ablations.py --root=runs/ablations --seed=0 \
        --main_job=runs/table/independent/seed0/main_job \
        --spatial_head=runs/table/independent/seed0/spatial_head \
        --extra=--stage1.epochs=20,--stage1.patience=0
    python benchmarks/decoder_ablations.py --root=runs/ablations_scenes --seed=0 \
        --extra=--stage1.epochs=40,--data.scenes=outfits --variants=stage_2_constant_6_ep

About 25 minutes on 2 CPU cores once the seed's features are cached. Runs given with
`--main_job` / `--spatial_head` must have been trained with the budget `--extra` gives
every other run (the second command's is the paper table's stage 1, its
`--stage1_flags`); one that was not is refused before anything trains.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import publish  # noqa: E402
from ofrnn_tf import pipeline  # noqa: E402
from ofrnn_tf.features import run_cache  # noqa: E402
from ofrnn_tf.decoding.beam_search import beam_search  # noqa: E402
from ofrnn_tf.metrics import format_table  # noqa: E402
from ofrnn_tf.run_dir import RunDir  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/ablations", "Run folders go to ROOT/seed<k>/<row>.")
flags.DEFINE_integer("seed", 0, "Data and weight seed.", lower_bound=0)
flags.DEFINE_string("main_job", None, "An existing main-job run of this seed to reuse "
                    "(default: trained under ROOT).")
flags.DEFINE_string("spatial_head", None, "An existing spatial-head run of this seed with the "
                    "same budget to reuse (e.g. the paper table's).")
flags.DEFINE_list("extra", [], "train.py flags every run gets where it reads them (e.g. "
                  "--stage1.epochs=20,--stage1.patience=0, as the paper table's rows).")
flags.DEFINE_list("variants", None, "Only these variants, by folder name (e.g. pla_loss, "
                  "stage_2_constant_6_ep, greedy; default: all).")
flags.DEFINE_bool("append", True, "Append the table to benchmarks/RESULTS.md.")
table_runs.define_cache_dir()
flags.adopt_module_key_flags(table_runs)

VARIANTS = {
    "spatial head (same budget)": ["--model.variant=baseline"],
    "steps = T_i": ["--train.train_steps=gt_count"],
    "steps = T_max": ["--train.train_steps=max"],
    "PLA loss": ["--train.loss=pla"],
    "stage 2 constant, 6 ep": ["--stage2.schedule=constant", "--stage2.epochs=6",
                               "--stage2.patience=2"],
    "stage 2 constant, 20 ep": ["--stage2.schedule=constant", "--stage2.epochs=20",
                                "--stage2.patience=3"],
    "stage 2 cosine, 20 ep": ["--stage2.epochs=20"],
    "LSTM 512, FC 1024": ["--model.lstm_units=512", "--model.fc_units=1024"],
    "overlap penalty (λ = 1)": ["--train.attention_penalty=1",
                                "--train.attention_penalty_form=overlap"],
    "doubly stochastic penalty (λ = 0.1)": ["--train.attention_penalty=0.1"],
}
COLUMNS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "mAP", "AP-small", "tau", "val score",
           "peak α", "same spot")
ROOT = Path(__file__).resolve().parents[1]


def _command(workdir: str, extra: list[str], mode: str) -> list[str]:
    """The ``train.py`` command of a variant: `extra` after the `--extra` it reads."""
    common = [f"--data.seed={FLAGS.seed}", f"--train.seed={FLAGS.seed}",
              f"--runtime.cache_dir={FLAGS.cache_dir}"]
    return [sys.executable, "train.py", f"--workdir={workdir}", f"--mode={mode}", *common,
            *table_runs.read_by([*common, *extra], FLAGS.extra), *extra]


def train(workdir: str, extra: list[str], mode: str = "train") -> RunDir:
    run_dir = RunDir(workdir)
    command = _command(workdir, extra, mode)
    remedy = ("give the --extra it was trained with or another --root, or remove the run to "
              "train it again")
    if mode == "eval" or not table_runs.finished(run_dir, command[2:], remedy):
        table_runs.run_child(command, cwd=ROOT)
    return run_dir


# The settings a reused run must share with its variant's command.
_BUDGET = ("data", "stage1", "stage2", "label_context", "train", "decoding")


def check_reused(flag: str, extra: list[str]) -> None:
    """Refuses, before anything trains, a run given with ``--<flag>`` that was trained
    with another budget or data than its variant's command gives (`table_runs.finished`
    on `_BUDGET`): one trained with another budget than `--extra` gives the rest, say."""
    folder = getattr(FLAGS, flag)
    if folder:
        # Its budget and data: its model may be another's (the paper table's head is wider).
        table_runs.finished(RunDir(folder), _command(folder, extra, "train")[2:], (
            f"give the --extra it was trained with, or leave out --{flag} to train the run "
            f"under --root"), sections=_BUDGET)


def attention_statistics(run_dir: RunDir, beam_size: int | None = None) -> dict:
    """`peak α` and `same spot` (percent) over the run's decoded test paths; nothing for a
    model without a decoder."""
    model, config, facts = table_runs.load_run(run_dir)
    if not model.uses_decoder:
        return {}
    beam_size = beam_size or config.decoding.beam_size
    tau = run_dir.calibration(beam_size)["tau"]
    dataset = pipeline.eval_dataset(run_cache.locate_features(config, facts), facts, "test")
    peaks, same = [], []
    for batch in dataset:
        paths = beam_search(model, batch["features"], beam_size=beam_size,
                            max_steps=facts.max_steps, threshold=tau,
                            min_labels=config.decoding.min_labels)
        for attention, length in zip(paths["attention"].numpy(), paths["num_labels"].numpy()):
            attention = attention[:length]
            peaks.extend(attention.max(-1))
            spots = attention.argmax(-1)
            same.extend(spots[1:] == spots[:-1])
    return {"peak α": 100.0 * np.mean(peaks), "same spot": 100.0 * np.mean(same)}


def scored(run_dir: RunDir, beam_size: int | None = None) -> dict:
    """A run's test metrics, its attention statistics and, as ``val score``, the
    validation score of its chosen epoch (what a choice between variants should look at)."""
    metrics = run_dir.load_metrics("test", beam_size)
    metrics["val score"] = run_dir.load_best_info()["validation"]["score"]
    metrics.update(attention_statistics(run_dir, beam_size))
    return metrics


def _folder_name(variant: str) -> str:
    """The run folder (and `--variants` name) of a variant: its name up to any "(",
    in lower case with underscores."""
    return re.sub(r"\W+", "_", variant.split(" (")[0]).strip("_").lower()


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    known = [_folder_name(name) for name in VARIANTS] + ["greedy"]
    unknown = sorted(set(FLAGS.variants or ()) - set(known))
    if unknown:
        raise app.UsageError(f"--variants takes some of {', '.join(known)}; got {unknown}")
    # The train.py children run from the repository root.
    table_runs.make_absolute("root", "main_job", "spatial_head", "cache_dir")
    check_reused("main_job", [])
    check_reused("spatial_head", VARIANTS["spatial head (same budget)"])
    base = os.path.join(FLAGS.root, f"seed{FLAGS.seed}")
    main_job = FLAGS.main_job or os.path.join(base, "main_job")
    rows = {"main job (K = 3)": scored(train(main_job, []))}
    for name, extra in VARIANTS.items():
        folder_name = _folder_name(name)
        if FLAGS.variants and folder_name not in FLAGS.variants:
            continue
        folder = os.path.join(base, folder_name)
        if name.startswith("spatial head") and FLAGS.spatial_head:
            folder = FLAGS.spatial_head
        rows[name] = scored(train(folder, extra))
    greedy = os.path.join(base, "main_job_greedy")
    if not FLAGS.variants or "greedy" in FLAGS.variants:
        if not (os.path.isdir(greedy) and os.path.exists(RunDir(greedy).metrics_file("test", 1))):
            shutil.rmtree(greedy, ignore_errors=True)
            shutil.copytree(main_job, greedy)
            train(greedy, ["--decoding.beam_size=1"], mode="eval")
        rows["greedy (K = 1)"] = scored(RunDir(greedy), beam_size=1)  # epoch chosen with K = 3
    table = format_table(rows, columns=list(COLUMNS), name_header="variant")
    budget = f" (every run with {' '.join(FLAGS.extra)})" if FLAGS.extra else ""
    lines = [f"Embedded benchmark, data and weight seed {FLAGS.seed}, test split; each variant "
             f"changes one thing of the main job and keeps its budget{budget}; thresholds on "
             f"validation; `val score` is stage 2's validation objective at the epoch it "
             f"chose ((C-F1 + O-F1) / 2, or mAP for the head alone).", "", table]
    publish("The main job's decoder, one change at a time", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
