"""The composition root: builds every part from settings, serves them, and closes what it opened."""

__version__ = "0.1.0"
