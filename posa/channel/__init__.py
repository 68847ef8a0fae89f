"""posa/channel."""
