"""The command-line entry points (console scripts of the package; thin absl layers)."""
