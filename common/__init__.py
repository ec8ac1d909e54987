"""Code shared by every tuninetd process: the wire protocol and the worker runtime."""
__version__ = "2.0.0"
