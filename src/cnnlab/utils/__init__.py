"""Small shared helpers: seed derivation, atomic file writes, console output."""
