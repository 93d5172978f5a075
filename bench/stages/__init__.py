"""The six stages, in the order they run."""
