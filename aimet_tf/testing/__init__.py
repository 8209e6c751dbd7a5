"""Test helpers and tiny models."""
