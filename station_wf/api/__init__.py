"""The face: HTTP in, HTTP out (Starlette). Owns routing, the request context (ids, auth, limits),
body reading and rendering. May import `services/`, `principals`, `errors`, `dsl` (the schema) and
`agents` (the catalog); never `store/` or `engine/`: every read and write goes through a service.
"""
