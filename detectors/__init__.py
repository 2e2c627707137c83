"""halluc detectors package."""
