"""Pure helpers of the network layers: URLs (normalise, redact, credentials) and CouchDB wire shapes. No I/O."""
