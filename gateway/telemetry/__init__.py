"""OpenTelemetry traces (GenAI semantic conventions) and Prometheus metrics."""
