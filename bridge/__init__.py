"""smpp-bridge: an SMPP 3.4 SMSC front end for HTTP SMS providers."""

__version__ = "0.1.0"
