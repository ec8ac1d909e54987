"""The tuninetd benchmark: ``python3 -m bench``; docs/performance.md."""
