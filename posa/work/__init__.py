"""posa/work."""
