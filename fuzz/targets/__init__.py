"""The fuzz targets, registered in `fuzz.harness.TARGETS` when this package is imported.

`fuzz/run.py` imports it inside `atheris.instrument_imports()`, so that every spg_media module
the targets import is instrumented for coverage.
"""

from fuzz.targets import media, sip, web

__all__ = ["media", "sip", "web"]
