"""exitnas: search early-exit neural networks (where to exit, how deep, wide and multi-scale)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
