"""The OpenTelemetry SDK side: providers, the exporter of each signal, export health, Prometheus.

``providers`` builds the three providers from the settings; ``exporters`` wraps each signal's
exporter once (scrub, report); ``export_health`` counts and reports what failed to export;
``prometheus`` serves the scrape endpoint.
"""
