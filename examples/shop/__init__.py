"""A small FastAPI + SQLAlchemy shop, the service otel-dist is demonstrated and tested on."""
