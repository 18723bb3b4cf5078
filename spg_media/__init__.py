"""spg-media: a pure-Python secure payment gateway for phone calls."""

__version__ = "0.1.0"
