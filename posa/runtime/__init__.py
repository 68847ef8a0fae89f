"""posa/runtime."""
