//! The Siphon worker: reads changes from PostgreSQL and writes them to Kafka.
