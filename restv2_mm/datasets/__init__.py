"""Tiny synthetic data sets in the real COCO and ADE20K formats (quick starts and tests)."""
