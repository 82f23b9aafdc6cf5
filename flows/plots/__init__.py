"""Plots of runs and sweeps (matplotlib, Agg backend: files only, no windows)."""
