"""FastAPI: per-app wiring, the one ASGI middleware, the server span, incoming context, errors, ids.

``instrument`` wires an app; ``middleware`` is the one ASGI pass per request; ``server_span`` is
the SERVER span and HTTP metrics; ``incoming_context`` decides what a caller's trace context may
do; ``errors`` writes the error bodies and the one unhandled-exception log line; ``request_id``
accepts or generates the request id. This package module imports nothing, so reading the request
id (``otel_dist.current_request_id``) does not import FastAPI.
"""
