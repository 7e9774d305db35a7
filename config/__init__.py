"""Salmon's application configuration: settings (values), boot (wiring), testing (test boot)."""
