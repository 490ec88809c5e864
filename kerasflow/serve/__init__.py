"""Serving a logged model over HTTP, and its client side."""
