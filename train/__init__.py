"""Training stage: image-level multilabel classifiers on weak labels (filled by a later issue)."""
