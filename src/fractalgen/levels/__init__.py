"""Generator kinds, one per file; a new kind is a new file registered here."""
from .ar import ARLevel
from .base import Level
from .mar import MARLevel
from .pixel import PixelHead

LEVEL_KINDS = {"ar": ARLevel, "mar": MARLevel}

__all__ = ["Level", "ARLevel", "MARLevel", "PixelHead", "LEVEL_KINDS"]
