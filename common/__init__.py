"""Shared landmark library of talking-portrait: geometry, the landmark file, drawing and editing."""

__version__ = "0.1.0"
