"""Executors: the code that performs an operation's action (`agent.run`, `human.approval`, ...)."""
