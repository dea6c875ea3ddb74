"""Hostile data through the command line: each bad line is rejected with its field named, nothing stored breaks a
later ``train``/``evaluate``, and no command prints a traceback. The same values through the Selector raise InputError."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from stopbandit import Selector
from stopbandit.errors import ConfigError, InputError
from stopbandit.sim import Simulator, run

BIG = "1" + "0" * 400  # 10**400: no float holds it
ARMS = ("full", "careful", "balanced", "aggressive")


def sb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stopbandit.cli", *args], capture_output=True, text=True, timeout=300)


def _foreign(event_id: str, x: str) -> str:
    multi = ",".join(f'{{"arm":"{a}"}}' for a in ARMS)
    return ('{"_label_cost":-1,"_label_probability":0.25,"_label_Action":1,"_labelIndex":0,'
            f'"Timestamp":"2026-01-01T00:00:00Z","EventId":"{event_id}","a":[1,2,3,4],'
            f'"c":{{"x":{x},"_multi":[{multi}]}},"p":[0.25,0.25,0.25,0.25]}}')


# name -> (how the exported line is changed, words the rejection names)
HOSTILE = {
    "EventId lone surrogate": (lambda s: s.replace('"EventId":"sim1-0"', '"EventId":"sim\\ud800-0"'), "request_id"),
    "EventId NUL": (lambda s: s.replace('"EventId":"sim1-0"', '"EventId":"sim\\u0000-0"'), "request_id"),
    "domain lone surrogate": (lambda s: s.replace('"domain":"science","em"', '"domain":"sci\\udc00","em"'), "domain"),
    "domain NUL": (lambda s: s.replace('"domain":"science","em"', '"domain":"sci\\u0000","em"'), "domain"),
    "feature lone surrogate": (lambda s: s.replace('"tenant":"acme"', '"tenant":"ac\\ud800me"'), "tenant"),
    "feature NUL": (lambda s: s.replace('"tenant":"acme"', '"tenant":"ac\\u0000me"'), "tenant"),
    "feature 10**400": (lambda s: s.replace('"score":0.5', f'"score":{BIG}'), "score"),
    "latency 10**400": (lambda s: s.replace('"latency_ms":12.0', f'"latency_ms":{BIG}'), "latency_ms"),
    "lambda 10**400": (lambda s: s.replace('"lam":0.2', f'"lam":{BIG}'), "lam"),
    "tokens 10**400": (lambda s: s.replace('"tokens":', f'"tokens":{BIG},"was":'), "tokens"),
    "foreign domain NUL": (lambda s: _foreign("f-1", '{"domain":"a\\u0000b","n":1}'), "domain"),
    "foreign feature 10**400": (lambda s: _foreign("f-2", f'{{"n":{BIG}}}'), "x_n"),
    "probability 10**400": (lambda s: re.sub(r'"p":\[[^,\]]+', f'"p":[{BIG}', s, count=1), "probability"),
    "foreign cost 10**400": (lambda s: _foreign("f-3", "{}").replace('"_label_cost":-1', f'"_label_cost":{BIG}'),
                             "_label_cost"),
    "number of 5,000 digits": (lambda s: s.replace('"score":0.5', f'"score":{"9" * 5000}'), "not valid JSON"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    sel = Selector.open(f"sqlite:///{d / 'src.db'}", seed=1, follow=False, snapshot=None)
    for r in Simulator(seed=1).stream(120):
        dec = sel.choose(r.prompt, domain=r.domain, request_id=r.request_id,
                         features={"tenant": "acme", "score": 0.5})
        o = run(r, dec.arm)
        sel.reward(dec.decision_id, em=o.em, tokens=o.tokens, latency_ms=12.0)
    sel.close()
    out = d / "events.jsonl"
    res = sb("replay", "export", "--db", f"sqlite:///{d / 'src.db'}", "--format", "dsjson", "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = out.read_text().splitlines()
    first = next(i for i, s in enumerate(lines) if '"EventId":"sim1-0"' in s)
    return d, lines.pop(first), lines


def test_each_hostile_line_is_rejected_naming_its_field_and_the_store_stays_usable(exported):
    d, base, good = exported
    bad = []
    for name, (change, _) in HOSTILE.items():
        line = change(base)
        assert line != base, name
        bad.append(line)
    path = d / "hostile.jsonl"
    path.write_text("\n".join(good + bad) + "\n")
    url = f"sqlite:///{d / 'dst.db'}"
    assert sb("db", "upgrade", "--db", url).returncode == 0
    res = sb("replay", "import", str(path), "--db", url, "--json")
    assert "Traceback" not in res.stdout + res.stderr
    assert res.returncode == 3, res.stdout + res.stderr  # partial: the good lines are in, the hostile ones out
    report = json.loads(res.stdout)
    assert report["inserted"] == len(good) and report["errors"] == len(HOSTILE)
    errors = {e["line"]: e["error"] for e in report["error_lines"]}
    for i, (name, (_, field)) in enumerate(HOSTILE.items()):
        msg = errors[len(good) + 1 + i]
        assert field in msg, (name, msg)
        assert "UnicodeEncodeError" not in msg and "OverflowError" not in msg and "DataError" not in msg
    for cmd in (("replay", "train", "--db", url, "--json"),
                ("replay", "evaluate", "--db", url, "--policy", "latest", "--json")):
        res = sb(*cmd)
        assert res.returncode == 0 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_an_overflowing_lambda_on_the_command_line_is_an_error_not_a_traceback(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert sb("db", "upgrade", "--db", url).returncode == 0
    res = sb("lambda", "set", BIG, "--reason", "x", "--db", url)
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr
    assert "must be a finite number" in res.stderr


@pytest.mark.parametrize("call, field", [
    (lambda s: s.choose("q", domain="a\x00b"), "domain"),
    (lambda s: s.choose("q", domain="a\ud800b"), "domain"),
    (lambda s: s.choose("q", features={"tenant": "a\ud800"}), "tenant"),
    (lambda s: s.choose("q", features={"tenant": "a\x00"}), "tenant"),
    (lambda s: s.choose("q", features={"score": 10**400}), "score"),
    (lambda s: s.choose("q", request_id="r\ud800"), "request_id"),
    (lambda s: s.reward(s.choose("q").decision_id, em=1.0, tokens=10, latency_ms=10**400), "latency_ms"),
    (lambda s: s.reward(s.choose("q").decision_id, em=1.0, tokens=10**400), "tokens"),
    (lambda s: s.reward(s.choose("q").decision_id, em=10**400, tokens=10), "em"),
])
def test_the_selector_names_the_field_of_hostile_values(sqlite_url, call, field):
    sel = Selector.open(sqlite_url, seed=1, follow=False)
    with pytest.raises(InputError, match=field):
        call(sel)
    with pytest.raises(ConfigError, match="lambda must be a finite number"):
        sel.set_lambda(10**400, reason="x")
    assert sel.flush() and sel.health().rejected == 0
    sel.close()
