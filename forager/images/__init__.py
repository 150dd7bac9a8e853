"""Executable images: sources, detection, the base images, resolution and wheelhouses, layers, content-hashed builds,
verification, the manifest and pruning; the sample image and Forager's own (`forager images ...`)."""
