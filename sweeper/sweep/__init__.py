"""The launcher: a launch end to end, its progress, its ensemble phase and what it keeps on disk."""
