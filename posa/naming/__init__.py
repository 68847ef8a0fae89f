"""posa/naming."""
