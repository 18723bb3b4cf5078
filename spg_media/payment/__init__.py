"""Payment: card rules, the caller's journey, connectors and the sandbox platform."""
