"""Ingress adapters: turn an HTTP request into a ChatCall, run the pipeline, write the Reply."""
