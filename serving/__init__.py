"""The online server (LitServe) and batch inference of a registered dlops model.

Imports `models/` (the registered model's own preprocessing and network), never `tasks/`.
"""
