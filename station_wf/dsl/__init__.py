"""Workflow definition language: loading, normalizing and validating workflow files."""
