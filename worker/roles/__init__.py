"""Runnable roles: receiver, consumer (and the processes that host them)."""
