"""Salmon state handlers: one module per kind of message vxgate routes."""
