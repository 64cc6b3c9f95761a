"""Graph-to-graph passes; `pipeline.py` lists them in order."""
