"""tdpdm: differentially private synthetic images."""

__version__ = "0.1.0"
