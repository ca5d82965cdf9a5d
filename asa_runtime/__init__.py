"""ASA runtime: linguistically planned sparse attention, from analyzer to generation."""

__version__ = "0.1.0"
