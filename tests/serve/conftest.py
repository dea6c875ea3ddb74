"""Fixtures of tests/serve: the real upstream engines (see :mod:`tests.serve.upstreams`)."""

from tests.serve.upstreams import llamacpp_upstream, tiny_upstream  # noqa: F401 (fixtures)
