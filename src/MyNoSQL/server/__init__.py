"""The mirror's HTTP server: a CouchDB-compatible subset of routes, plus ``/_mirrors`` and ``/_up``."""
