"""The pure core: what the engine decides, as functions of plain values. No I/O, no clock, no globals.

Owns: `model` (statuses, status sets, the dataclasses passed to and from the shell, `Rules`,
`derive_status`), `scopes` (the branch-path grammar and what a step reads), `interpreter` (the event
functions the shell calls), `flow` (how a scope moves on), `waits` (approvals and signals),
`history` (the initial context and rebuilding it from events), `identity` (step ids, idempotency
keys), `station_flow` (Station's data flow).

May import: `station_wf.expr` (the language's kernel) and libraries. Never the store, the bus,
telemetry, services or the api: the shell loads state, calls one function here and commits the
`Transition` it returns (tests/test_core.py checks the imports).
"""
