"""infer wing."""
