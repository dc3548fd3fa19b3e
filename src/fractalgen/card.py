"""Deprecated: the model card moved to fractalgen.formats.card. This module re-exports the old names
for one release and warns when imported."""
import warnings

from .formats.card import (
    ARXIV,
    CITATION,
    KIND_TAGS,
    PAPER,
    CardFacts,
    Measurement,
    architecture_table,
    facts_from_dict,
    front_matter,
    model_card,
    shown,
    usage,
    yaml_lines,
    yaml_scalar,
)

warnings.warn("fractalgen.card is deprecated and will be removed in the next release: import from "
              "fractalgen (CardFacts, Measurement) or fractalgen.formats.card",
              DeprecationWarning, stacklevel=2)

__all__ = ["ARXIV", "CITATION", "KIND_TAGS", "PAPER", "CardFacts", "Measurement", "architecture_table",
           "facts_from_dict", "front_matter", "model_card", "shown", "usage", "yaml_lines", "yaml_scalar"]
