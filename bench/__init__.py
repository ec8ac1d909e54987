"""The tuninetd benchmark (issue 6): ``python3 -m bench``; README.md, Performance."""
