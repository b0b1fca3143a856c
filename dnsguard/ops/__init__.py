"""Operations: Prometheus metrics, the HTTP API and reloading on file change, for every daemon."""
