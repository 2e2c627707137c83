"""halluc benchmarks package."""
