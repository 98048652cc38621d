"""On-disk storage: write-ahead log, LZMA shard files, the SQLite index and the RAM caches."""
