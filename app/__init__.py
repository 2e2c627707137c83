"""The halluc Streamlit dashboard: browse runs, compare interventions, inspect samples (see app/README.md)."""

__all__: list[str] = []
