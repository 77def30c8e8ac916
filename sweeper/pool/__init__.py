"""The worker pool: the interface the launcher and its workers share; local processes and Ray
actors behind it; the supervisor of one phase."""
