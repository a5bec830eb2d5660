"""What operators see: Prometheus metrics (the worker's series, the queue-depth exporter),
JSON log lines with the execution id, and rq-dashboard's pages as dockrq extends them."""
