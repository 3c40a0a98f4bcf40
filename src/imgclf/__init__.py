"""imgclf: a reproducible image-classification pipeline (DVC), its model artifact and its API.

The package is split by part of the product, one subpackage each, so that the folder
names alone say where a thing lives (docs/architecture.md draws the map):

- ``data``: images to arrays (digits, ``prepare``, the one ``preprocess()``, input features)
- ``training``: the torch side (architectures, augmentation, portable numerics, the loop)
- ``artifact``: ``models/`` (file names, card, export, integrity, the one ``Predictor``)
- ``evaluation``: ``evaluate``, baselines, the paired test, the reference profile
- ``ood``: the out-of-distribution flag (detector, fit, synthetic sets)
- ``serving``: the API (no torch, no training, no pipeline code)
- ``monitoring``: recording served traffic (shipped to the bucket) and the drift report
- ``report``: the pull-request and dataset reports
- ``release``: the model registry in git tags (GTO), the promotion gate, what is live
- ``pipeline``: DVC and git plumbing (stage runner, stage deps, lock check, remote)

The ``__init__`` files hold only docstrings: importing a module runs them, and a
stage's ``dvc.yaml`` deps must be exactly the files it runs (``pipeline.stagedeps``).
"""
