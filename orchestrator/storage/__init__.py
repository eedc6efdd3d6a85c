"""Where runs live: the run layout (paths, records), durable stores (a folder, S3) and streams."""
