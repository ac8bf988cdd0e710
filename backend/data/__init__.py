"""Layer 2, contracts and storage: event models and schemas, Kafka I/O, the ingest logic, the
Parquet lake, MovieLens and the item catalog."""
