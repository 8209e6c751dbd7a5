"""Peer tools: scripts run in other virtual environments, and the helpers that drive them."""
