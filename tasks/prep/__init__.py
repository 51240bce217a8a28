"""Making data: ingest (sources -> images table), degradations and recipes, crappify (-> pairs), samples."""
