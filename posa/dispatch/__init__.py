"""posa/dispatch."""
