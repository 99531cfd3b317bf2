"""HTTP API: definitions, projections, timelines, webhook ingestion."""
