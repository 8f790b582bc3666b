"""Worker processes: host one engine each."""
