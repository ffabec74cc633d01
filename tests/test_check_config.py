"""`llm-service check-config` finds what start-up would hit later: every problem, one line each, field path
first, exit 2; a provider whose key variable is unset is a warning, not an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main

GOOD = """
server: {master_key: k}
providers:
  up: {type: openai, base_url: "https://api.example.com/v1", api_key: sk-x}
  local: {type: mock}
models:
  - {name: a, targets: [{provider: up, model: m}]}
  - {name: mock, targets: [{provider: local, model: mock}]}
"""


def _check(tmp_path: Path, text: str, capsys) -> tuple[int, list[str], str]:
    f = tmp_path / "config.yaml"
    f.write_text(text)
    code = main(["check-config", str(f)])
    out = capsys.readouterr()
    return code, out.err.strip().splitlines(), out.out


@pytest.mark.parametrize("text, line", [
    ("", "<root>: the file is empty"),
    ("# only a comment\n", "<root>: the file is empty"),
    (GOOD + "routing: {retries: -1}\n", "routing.retries: must be >= 0"),
    (GOOD + "routing: {backoff_base: -0.5}\n", "routing.backoff_base: must be >= 0"),
    (GOOD.replace("api_key: sk-x", "api_key: sk-x, timeouts: {first_byte: -1}"),
     "providers.up.timeouts.first_byte: must be > 0"),
    (GOOD.replace("https://api.example.com/v1", "api.example.com/v1"),
     "providers.up.base_url: must start with http:// or https:// (got 'api.example.com/v1')"),
    (GOOD.replace("{provider: up, model: m}", "{provider: upp, model: m}"),
     "models[0].targets[0].provider: unknown provider 'upp'"),
    (GOOD + "  - {name: a, targets: [{provider: local, model: mock}]}\n", "models[2].name: duplicate model name 'a'"),
    (GOOD.replace("{provider: up, model: m}]", "{provider: up, model: m}], price: {input: 1, output: -2}"),
     "models[0].price.output: must be >= 0"),
    (GOOD.replace("{provider: up, model: m}", "{provider: up, model: m, price: {input: -1}}"),
     "models[0].targets[0].price.input: must be >= 0"),
    (GOOD + "limits: {providers: {nope: {rpm: 5}}}\n", "limits.providers.nope: unknown provider 'nope'"),
    (GOOD.replace("local: {type: mock}", "g: {type: gemini, thought_signature_fallback: '(('}\n  local: {type: mock}"),
     "providers.g.thought_signature_fallback: not a valid regular expression"),
])
def test_each_broken_config_is_one_line_naming_the_field(tmp_path, capsys, text, line):
    code, lines, out = _check(tmp_path, text, capsys)
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith(line), lines


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    text = (GOOD.replace("https://api.example.com/v1", "api.example.com")
            .replace("{provider: up, model: m}", "{provider: upp, model: m}")
            + "routing: {retries: -1}\nlimits: {redis_timeout: 0}\n")
    code, lines, _ = _check(tmp_path, text, capsys)
    assert code == 2
    assert [ln.split(":")[0] for ln in lines] == [
        "providers.up.base_url", "routing.retries", "models[0].targets[0].provider", "limits.redis_timeout"]


def test_unset_key_variable_is_a_warning_naming_provider_and_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLM_TEST_UNSET_KEY", raising=False)
    code, lines, out = _check(tmp_path, GOOD.replace("api_key: sk-x", "api_key: '${LLM_TEST_UNSET_KEY:-}'"), capsys)
    assert code == 0 and "OK" in out
    assert len(lines) == 1 and lines[0].startswith("warning: provider 'up' has no API key: LLM_TEST_UNSET_KEY")
    # bedrock signs with AWS credentials when api_key is empty; mock needs no key: no warning for them
    text = (GOOD + "  - {name: b, targets: [{provider: aws, model: m}]}\n").replace("local: {type: mock}", "local: {type: mock}\n  aws: {type: bedrock, region: us-east-1, "
                        "api_key: '${LLM_TEST_UNSET_KEY:-}'}")
    code, lines, out = _check(tmp_path, text, capsys)
    assert code == 0 and lines == [], lines
