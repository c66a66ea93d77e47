"""use wing."""
