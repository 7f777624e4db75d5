"""The toy run of the test suite's `tiny_export_run`, which `benchmarks/bench_startup.py`
times as well: `train.py` flags for the embedded benchmark at toy size."""

TINY_TRAIN_FLAGS = ("--data.num_train=64", "--data.num_val=32", "--data.num_test=16",
                    "--stage1.epochs=1", "--stage2.epochs=1", "--train.batch_size=32",
                    "--model.lstm_units=32", "--model.fc_units=32",
                    # the whole path, label context included, as the scene-mode preset runs it
                    "--model.label_context_units=16", "--label_context.epochs=2")
