"""posa/wire."""
