"""The docs are tested: links resolve, documented commands exist, examples print what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clihelp import modelyard

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_readme_links_to_existing_docs() -> None:
    links = re.findall(r"\]\((docs/[^)]+)\)", (ROOT / "README.md").read_text())
    assert links, "README links no docs"
    for link in links:
        assert (ROOT / link).is_file(), link


def _documented_commands() -> list[list[str]]:
    """`modelyard a b` from the first column of the CLI reference table."""
    commands = []
    for cell in re.findall(
        r"^\| `modelyard ([a-z -]+?)(?: [A-Z\[`-].*)?` \|", (DOCS / "cli.md").read_text(), re.M
    ):
        words = [w for w in cell.split() if re.fullmatch(r"[a-z-]+", w)]
        commands.append(words[:2] if len(words) > 1 and words[1] != "-" else words[:1])
    return commands


@pytest.mark.parametrize("command", _documented_commands(), ids=" ".join)
def test_every_documented_command_has_help(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.cli import main  # in process: the entry point itself is tested in test_cli

    code = main([*command, "--help"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Usage" in out


def test_cli_error_example_prints_what_the_docs_show(tmp_path: Path) -> None:
    text = (DOCS / "cli.md").read_text()
    example = re.search(r"\$ (modelyard registry show \S+)\n(error: .+)\n\$ echo \$\?\n(\d+)", text)
    assert example is not None
    command, expected_line, expected_code = example.groups()
    assert modelyard("init", home=tmp_path).code == 0
    r = modelyard(*command.split()[1:], home=tmp_path)
    assert r.err.strip() == expected_line
    assert r.code == int(expected_code)


def test_finetune_config_reference_is_a_valid_config() -> None:
    from modelyard.finetune import parse_config

    text = (DOCS / "finetune.md").read_text()
    block = re.search(r"## The config\n\n```yaml\n(.*?)```", text, re.S)
    assert block is not None
    import yaml

    config = parse_config(yaml.safe_load(block.group(1)))
    documented = set(re.findall(r"^  (\w+):", block.group(1), re.M))
    assert set(type(config.training).model_fields) <= documented  # every training key is documented
    # quality only: latency has its own bound (compared with the champion's, it fails on noise)
    assert config.evaluation.gates[-1] == "not_worse_than: champion on exact_match, token_f1"


def test_finetune_typo_example_prints_what_the_docs_show(tmp_path: Path) -> None:
    text = (DOCS / "finetune.md").read_text()
    example = re.search(
        r"\$ modelyard finetune -c typo.yaml\n(error: .+)\n\$ echo \$\?\n(\d+)", text
    )
    assert example is not None
    (tmp_path / "typo.yaml").write_text(
        "base_model: ./base\ndata: {train: t.jsonl}\ntraining: {learning_rat: 0.1}\n"
        "registry: {model: m}\n"
    )
    r = modelyard("finetune", "-c", str(tmp_path / "typo.yaml"), home=tmp_path / "home")
    assert r.err.strip() == example.group(1)
    assert r.code == int(example.group(2))
