"""Agents: `environments/<env>/agents/<name>.prompt` files and the ways to call them."""
