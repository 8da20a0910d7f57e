"""Test support shared by every suite, imported as ``tests.support``."""
