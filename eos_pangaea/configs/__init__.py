"""Hydra configs that PANGAEA's ``run.py`` finds through the ``eos_pangaea_searchpath`` plugin."""
