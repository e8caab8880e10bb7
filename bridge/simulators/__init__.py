"""smpp-bridge."""
