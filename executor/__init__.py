"""The executor role: runs the start and stop commands for the supervisor."""

# Every process of a run carries this in its environment (the value is the
# run's id): where there is no cgroup, it tells the run's processes from the
# daemons earlier commands left running on purpose.
RUN_ID_VAR = "TUNINETD_RUN_ID"
