"""Agents: `environments/<env>/agents/<name>.prompt` files and the ways to call them.

`executor.py` is the `agent.run` executor (the `executors` protocol, implemented here); `catalog`,
`prompt` and `schemas` read and check agent files; `providers/` talk to the models.
"""
