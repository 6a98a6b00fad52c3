"""The commands that look at models and runs: `inspect` (weight table, plots), `plot` (loss curves), `bench`
(side-by-side measurements)."""
