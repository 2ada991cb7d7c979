"""Validation of built artifacts against the original model.

Modules (heavy ones import numpy/torch; the light ones are marked):

- :mod:`.expectations` (light, pure Python): the thresholds and the verdict;
  used by ``ValidateStep.judge`` and by reports, never imports numpy or torch.
- :mod:`.metrics`: error, cosine, top-1 and token agreement, perplexity (numpy).
- :mod:`.reference`: runs the original model in eager PyTorch and writes the
  ``reference`` artifact (LLM checkpoints and generic exported modules).
- :mod:`.runners`: executes an artifact (exported program, ``.pte``,
  ``.mlpackage``) on the reference's inputs and times it.
- :mod:`.measure`: drives a runner over the reference and collects figures.
- :mod:`.plots`: PNG plots (matplotlib, Agg backend).
- :mod:`.report` (light): measurements.json, report.json, report.md, and the
  verdict report.
"""
