"""config.yaml -> Structs: interpolation, defaults, and errors that name the field path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, load, parse

ROOT = Path(__file__).parent.parent


def _raw(**over):
    raw = {"server": {"master_key": "k"}, "providers": {"openai": {"type": "openai", "base_url": "http://x/v1"}},
           "models": [{"name": "a", "targets": [{"provider": "openai", "model": "m"}]}]}
    raw.update(over)
    return raw


def test_shipped_config_is_valid():
    cfg = load(ROOT / "config.yaml", env={})
    assert cfg.server.port == 8080
    assert {m.name for m in cfg.models} >= {"mock"}


def test_interpolation_with_defaults():
    raw = _raw(server={"master_key": "${KEY}", "host": "${HOST:-0.0.0.0}", "port": "${PORT:-9000}"})
    cfg = parse(raw, env={"KEY": "secret"})
    assert (cfg.server.master_key, cfg.server.host, cfg.server.port) == ("secret", "0.0.0.0", 9000)
    with pytest.raises(ConfigError, match=r"^server.master_key: environment variable KEY is not set"):
        parse(raw, env={})


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["models"].append({"name": "b", "targets": [{"provider": "opnai", "model": "m"}]}),
     "models[1].targets[0].provider: unknown provider 'opnai'"),
    (lambda r: r["providers"]["openai"].update(type="opnai"), "providers.openai.type: unknown provider type 'opnai'"),
    (lambda r: r["server"].update(port="eighty"), "server.port: Expected `int`, got `str`"),
    (lambda r: r["server"].update(prot=1), "server.prot: unknown field"),
    (lambda r: r["providers"]["openai"].update(timeouts={"idle": "x"}), "providers.openai.timeouts.idle: Expected `float`"),
    (lambda r: r["providers"]["openai"].update(strem_usage=True), "providers.openai.strem_usage: unknown field"),
    (lambda r: r["models"][0].pop("targets"), "models[0].targets: required field is missing"),
    (lambda r: r["models"].append({"name": "a", "targets": [{"provider": "openai", "model": "m"}]}),
     "models[1].name: duplicate model name 'a'"),
])
def test_errors_name_the_field(mutate, message):
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError) as e:
        parse(raw, env={})
    assert str(e.value).startswith(message), str(e.value)


def test_check_config_cli_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {master_key: k}\nproviders: {openai: {type: openai}}\n"
                   "models:\n  - {name: a, targets: [{provider: openai, model: m}]}\n"
                   "  - {name: b, targets: [{provider: opnai, model: m}]}\n")
    r = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["models[1].targets[0].provider: unknown provider 'opnai'"]
    r = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(ROOT / "config.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
