"""CSRec: training sequential recommenders with confident soft labels (arXiv 2311.02446)."""

__version__ = "0.1.0"
