"""Executors: the protocol an action's code implements (`StepCall` -> `StepResult`) and the registry.

Only the protocol lives here; the one executor, `agent.run`, is `agents/executor.py`, so `agents`
imports `executors` and never the other way. `human.approval` and `signal.wait` are not executors:
they are waits decided by the interpreter (`core/waits.py`).
"""
