"""k4s: Kubernetes + u-root-style utilities. Nothing runs at import time."""

__version__ = "0.1.0"
