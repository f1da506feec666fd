"""Test helpers shared across test packages (importable because tests/ is on sys.path under pytest)."""
