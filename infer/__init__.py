"""Inference stage: score every cell, blend with image scores, write the submission (filled by a later issue)."""
