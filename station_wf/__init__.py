"""station-wf: a durable workflow orchestrator daemon."""
