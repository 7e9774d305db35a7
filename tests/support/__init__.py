"""Test support code: a private Postfix instance harness and an SMTP sink server."""
