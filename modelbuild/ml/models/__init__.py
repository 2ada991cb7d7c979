"""Small models defined in the project, for examples and tests.

Each module exposes a seeded factory ``make(...)`` returning an ``nn.Module`` in
eval mode, usable as ``module = "modelbuild.ml.models.<name>:make"`` in an
``export`` target.
"""
