"""posa/delivery."""
