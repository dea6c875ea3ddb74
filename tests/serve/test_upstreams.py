"""The upstream helpers themselves: our decoder server as a subprocess, ready, exact in chunks, and gone at close."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tests.serve.upstreams import post_json, start_decoder_server, tiny_upstream  # noqa: F401 (tiny_upstream is a fixture)


def test_tiny_upstream_reports_its_delimiters(tiny_upstream):
    entry = tiny_upstream.info["models"]["data"][0]
    assert tiny_upstream.url.startswith("http://127.0.0.1:") and entry["id"] == "tiny"
    assert entry["stopbandit"]["mode"] == "engine" and entry["stopbandit"]["think_end"] == "</think>"


def test_tiny_upstream_decodes_in_chunks_exactly(tiny_upstream):
    url = tiny_upstream.url + "/v1/completions"
    status, one = post_json(url, {"prompt": "what is 2+2?", "max_tokens": 30, "return_token_ids": True})
    assert status == 200, one
    prompt, want = one["choices"][0]["prompt_token_ids"], one["choices"][0]["token_ids"]
    got: list[int] = []
    while len(got) < len(want):
        status, part = post_json(url, {"prompt": prompt + got, "max_tokens": 7, "return_token_ids": True})
        assert status == 200, part
        got += part["choices"][0]["token_ids"]
    assert got[: len(want)] == want


def test_close_stops_the_process_and_frees_the_port():
    upstream = start_decoder_server("--tiny", "--seed", "5")
    url = upstream.url
    with upstream:
        assert post_json(url + "/v1/completions", {"prompt": "a", "max_tokens": 1})[0] == 200
    assert upstream.process.poll() is not None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/v1/models", timeout=2)
