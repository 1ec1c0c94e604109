"""The `jepaflow` command line (typer)."""
