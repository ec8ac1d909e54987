"""The tuninetd benchmark (issue 6): ``python3 -m bench``. See bench/PERFORMANCE.md."""
