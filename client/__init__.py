"""Serving side of the multimodal price predictor.

This package is the ground floor: catalog parsing, image fetching and preparation, tokenisation,
the bundle format, and the `client` command. It never imports torch, `training` or `export`.
"""

from __future__ import annotations

__version__ = "0.1.0"
