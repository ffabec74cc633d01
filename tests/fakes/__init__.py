"""Fake upstreams the tests start on 127.0.0.1, each speaking a provider's real wire format."""
