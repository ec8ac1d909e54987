"""Code shared by tuninetd's processes and tuntapd: the wire protocol, the
worker runtime, and one copy of each helper (detaching, signals into a loop,
/proc status, interface names, logging, command-line refusals)."""
__version__ = "2.0.0"
