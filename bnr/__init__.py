"""bnr: Background Noise Reduction of attention maps for weakly supervised semantic segmentation.

A reproducible pipeline (DVC stages in ``stages/``) built on this importable library.
"""

__version__ = "0.1.0"
