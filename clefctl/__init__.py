"""clefctl: CLEF (Zhang et al., ICCV 2023) for facial action units and expressions."""

__version__ = "0.1.0"
