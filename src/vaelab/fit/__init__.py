"""fit wing."""
