"""Helpers for integration tests that run real servers in subprocesses."""
