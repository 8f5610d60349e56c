"""MCP: the servers an environment's agents call tools on, and the daemon's own `/mcp` server (issue 20)."""
