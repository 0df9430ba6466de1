"""nodekiln: immutable Kubernetes node images and the sites that run them."""

__version__ = "0.1.0"
