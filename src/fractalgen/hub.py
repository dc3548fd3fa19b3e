"""Deprecated: model folders are read and written by fractalgen.formats.folder (`export` is in
fractalgen.formats). This module re-exports the old names for one release and warns when imported."""
import warnings

from .formats import export
from .formats.card import CardFacts, facts_from_dict, model_card
from .formats.folder import (
    CARD_NAME,
    CONFIG_NAME,
    FOLDER_FILES,
    OUR_FIELDS,
    WEIGHTS_NAME,
    folder_config,
    sampling_recommendation,
    save_pretrained,
)

warnings.warn("fractalgen.hub is deprecated and will be removed in the next release: import from "
              "fractalgen (save_pretrained, export) or fractalgen.formats.folder",
              DeprecationWarning, stacklevel=2)

__all__ = ["CARD_NAME", "CONFIG_NAME", "FOLDER_FILES", "OUR_FIELDS", "WEIGHTS_NAME", "CardFacts", "export",
           "facts_from_dict", "folder_config", "model_card", "sampling_recommendation", "save_pretrained"]
