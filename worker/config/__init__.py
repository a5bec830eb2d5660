"""How a worker is configured: settings (environment, then flags), the operator's
policy over requests, and Docker image references and patterns."""
