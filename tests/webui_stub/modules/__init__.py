"""Stand-in for the WebUI's ``modules`` package (test-only)."""
