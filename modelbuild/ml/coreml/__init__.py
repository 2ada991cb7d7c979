"""Core ML library code for the coreml, compress and mlmodelc steps.

- :mod:`.convert`: ``torch.export`` program -> ``MLModel`` (shapes, images, states)
- :mod:`.save`: byte-reproducible ``.mlpackage`` saving (``deterministic_save``)
- :mod:`.compress`: ``coremltools.optimize.coreml`` weight compression
- :mod:`.ops`: converters for torch ops coremltools lacks (``index_copy``)
- :mod:`.describe`: a spec's inputs, outputs and states as plain JSON
- :mod:`.delegate`: reproducible ``.pte`` files with a Core ML delegate

Modules import coremltools inside functions, so importing this package is cheap.
"""
