"""Examples of posa in use; run them from the repository's root, e.g.
``python -m examples.netagents``."""
