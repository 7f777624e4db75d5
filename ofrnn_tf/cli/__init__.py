"""The command-line entry points (console scripts of the package; thin absl layers)."""

from absl import app


def runner(define_flags, main):
    """A console script's entry: define the command's flags (only when it runs, so importing
    a command module defines none), then run `main` under absl."""

    def run():
        define_flags()
        app.run(main)

    return run
