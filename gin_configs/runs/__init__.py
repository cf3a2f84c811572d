"""Gin files (runs); a package so that gin and setuptools find them like the code."""
