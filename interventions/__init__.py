"""halluc interventions package."""
