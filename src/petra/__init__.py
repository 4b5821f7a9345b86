"""Petra: an immutable, image-based Debian and the toolkit that composes, ships and updates it."""

__version__ = "0.1.0"
