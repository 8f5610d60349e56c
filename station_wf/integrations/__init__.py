"""Integrations (issue 19): outgoing webhooks, incoming triggers, bundles. One module per job.

A room beside `services/`: it may use `store/`, `services/`, `dsl/`, `agents/`, never `api/` (the API
modules `api/hooks.py`, `api/webhook_subscriptions.py`, `api/bundles.py` call into it).

- `signing`: HMAC-SHA256 over `<timestamp>.<body>`, one way for every signed request we send or take;
- `subscriptions`: what a subscription is (checked), the environment's `webhooks:` section, the service;
- `delivery`: the singleton loop that turns events into deliveries and POSTs them;
- `triggers`: `POST /api/v1/hooks/{name}` verified and mapped into a run start;
- `bundles`: read, validate, install and create bundle folders and archives.
"""
