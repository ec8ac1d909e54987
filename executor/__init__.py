"""The executor role: runs the start and stop commands for the supervisor."""
