"""Helpers shared by several test modules (servers the tests stand up themselves)."""
