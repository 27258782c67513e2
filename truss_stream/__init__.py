"""Typed streams for model serving."""
