"""Baselines that lamina's benchmarks run side by side with it: recipes of other projects,
reimplemented from their descriptions. Never part of the package."""
