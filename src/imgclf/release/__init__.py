"""Releases: the model registry in git tags (GTO), the promotion gate, what is live."""
