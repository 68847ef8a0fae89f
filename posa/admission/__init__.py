"""posa/admission."""
