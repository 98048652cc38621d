"""Replication: CouchDB's protocol between a local database and mirrors (or CouchDB/PouchDB servers)."""
