"""Experiments: named cell lists (presets), sweeps, the runner, grids and reports."""
