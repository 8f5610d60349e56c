"""Governance (issue 18): who may do what (roles, the route permission table), how much may run at
once and how fast (limits, rate limits), and the policies an environment's `policies.yaml` adds.

One module per job; the rest of the system calls in with one line at each place it applies."""
