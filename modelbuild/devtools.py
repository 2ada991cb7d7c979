"""What the build graph knows about ExecuTorch's developer tools (light: no torch).

A ``lower`` target can write an ETRecord (``etrecord.bin``) beside its
``.pte``. Whether it does is its ``etrecord`` parameter; left unset, the build
graph decides it in one place, :func:`apply_asks`: a consumer step lists what
it asks of the producers in each input slot (``Step.asks``), e.g. the
``profile`` and ``validate`` steps ask ``{"etrecord": True}`` of their ``pte``
and ``artifact`` inputs. A value the recipe sets is never overridden, and the
decided value is part of the producer's action key like any parameter.

Example::

    class ProfileStep(Step):
        asks = {"pte": {"etrecord": True}}
"""

from __future__ import annotations

from typing import Any

__all__ = ["ETRECORD_FILE", "ETRECORD_DOC", "apply_asks", "with_etrecord"]

#: The ETRecord's file name inside a ``pte`` artifact.
ETRECORD_FILE = "etrecord.bin"
ETRECORD_DOC = ("Write ExecuTorch's ETRecord (etrecord.bin) beside the .pte, for the Inspector. Unset: on when a "
                "profile or validate target consumes this one, off otherwise. The .pte bytes are the same either way.")


def with_etrecord(params_model: type) -> type:
    """``params_model`` with an ``etrecord: bool | None = None`` parameter added."""
    from pydantic import Field, create_model

    return create_model(
        params_model.__name__,
        __base__=params_model,
        __doc__=params_model.__doc__,
        etrecord=(bool | None, Field(None, description=ETRECORD_DOC)),
    )


def apply_asks(nodes: dict[str, Any]) -> None:
    """Fill the producers' unset parameters that their consumers ask for (``Step.asks``), in place.

    ``asks`` is a dict (slot -> {param: value}) or a method of the step taking
    its params and returning one. Only parameters the producer declares and the
    recipe left at ``None`` are filled. Two consumers asking different values for the same parameter
    keep the first (by target name) — asks are for opt-in extras, so in
    practice they agree.
    """
    for name in sorted(nodes):
        node = nodes[name]
        asks = getattr(node.step, "asks", None) or {}
        if callable(asks):  # asks that depend on the consumer's own parameters
            asks = asks(node.params) or {}
        for slot, wanted in asks.items():
            producers = node.inputs.get(slot)
            if producers is None:
                continue
            for producer in producers if isinstance(producers, list) else [producers]:
                target = nodes[producer]
                fields = type(target.params).model_fields
                update = {k: v for k, v in wanted.items()
                          if k in fields and getattr(target.params, k) is None and k not in target.target.params}
                if update:
                    target.params = target.params.model_copy(update=update)
