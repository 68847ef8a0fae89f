"""posa/naming/zeroconf."""
