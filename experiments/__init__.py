"""Runnable research, each run from the repository root as `python -m experiments.NAME`; the run
configs they train are in `configs/`, their report prose in `templates/`, recorded results in
`results/`. `fits` holds the scaling-law fits; the measuring and reporting helpers are
benchmarks.harness."""
