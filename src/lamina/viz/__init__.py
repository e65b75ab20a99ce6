"""Plots that make the principles visible. matplotlib is imported lazily: only when a plot is drawn."""
