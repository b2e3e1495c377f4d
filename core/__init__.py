"""The kernel: what every app shares (errors, roles, API-key auth, Redis access, client IP,
decimal bounds, shared form and API fields, the lean API path). It imports no domain app."""
