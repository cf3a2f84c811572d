"""Gin files (models); a package so that gin and setuptools find them like the code."""
