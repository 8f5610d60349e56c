"""Benchmarks: scripts that start a real daemon and print numbers. Never part of `make test`."""
