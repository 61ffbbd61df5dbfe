"""README.md stays true: its Python examples run, the set-up commands are the
ones CI runs, and the sample `inspect` output is what the CLI prints."""

import os
import re

import pytest

from resumable_scheduler import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")

DEMO_COMMAND = 'pip install -e ".[test,plot]" && resumable-scheduler demo'
TEST_COMMAND = 'pip install -e ".[test,plot,torch]" && python -m pytest -q'


def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_the_two_set_up_commands_are_there_and_match_ci():
    text = readme()
    section = text.split("## The two set-up commands", 1)[1].split("\n## ", 1)[0]
    assert f"`{DEMO_COMMAND}`" in section
    assert f"`{TEST_COMMAND}`" in section
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert 'python -m pip install -q -e ".[test,plot,torch]"' in ci
    assert ci.rstrip().endswith("python -m pytest -q")


def test_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", readme(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            pytest.fail(f"README.md python block {i} failed: {type(e).__name__}: {e}\n{block}")
    out = capsys.readouterr().out
    assert "15 15" in out
    assert "12 12 0.008187" in out
    assert "[] 12\n" in out  # rs.goodput of that file

    # The sample `inspect` output is what the CLI prints for that file.
    assert cli.main(["inspect", "ckpt/e12.keras"]) == 0
    printed = capsys.readouterr().out.splitlines()
    sample = readme().split("$ resumable-scheduler inspect ckpt/e12.keras\n", 1)[1].split("```", 1)[0]
    for line in sample.splitlines():
        if line.strip() and line.strip() != "...":
            assert line in printed, f"README's inspect sample line {line!r} is not what the CLI prints"
