"""Gin files (experiments); a package so that gin and setuptools find them like the code."""
