"""The use cases the face (API and CLI) calls: start and read runs, definitions and their versions,
approvals, signals and run control, schedules, the event hub, the `Idempotency-Key` policy, and the
rules for what JSON may be stored. May import `engine/`, `store/`, `dsl/`, `agents/`, `principals`,
`telemetry/`; never `api/` (nothing here knows HTTP). SQL stays in `store/`, behind named functions.
"""
