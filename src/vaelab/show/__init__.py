"""show wing."""
