"""Expressions, templates and context paths: the one place that reads workflow data by name."""
