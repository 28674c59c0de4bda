"""Image data: embedded datasets, folder scanning and validation, manifests,
the decoded-tensor cache and corruption ops."""
