"""An outside review of data and the registry: odd files, odd paths, tenants, refusal hints.

Each test runs what a user runs (the CLI in a subprocess, or the library call the CLI
makes) and asserts what they rely on: the exit code, the one error line, the rows read,
the rows and files left behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clihelp import modelyard


def _error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, never a traceback
    assert lines[0].startswith("error: "), err
    return lines[0]


# -- data: files that parse badly ------------------------------------------------------------


def test_deeply_nested_jsonl_row_is_one_error_not_a_traceback(tmp_path: Path) -> None:
    data = tmp_path / "deep.jsonl"
    good = json.dumps({"instruction": "a", "output": "b"})
    data.write_text(good + "\n" + '{"instruction": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    r = modelyard("data", "validate", str(data), "--format", "alpaca", home=tmp_path / "h")
    assert r.code == 2, r.err
    assert "line 2 nests lists or objects too deeply" in _error_line(r.err)


def test_deeply_nested_json_file_is_one_error(tmp_path: Path) -> None:
    data = tmp_path / "deep.json"
    data.write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    r = modelyard("data", "validate", str(data), "--format", "text", home=tmp_path / "h")
    assert r.code == 2, r.err
    assert "deep.json nests lists or objects too deeply" in _error_line(r.err)


def test_csv_with_a_long_document_is_read(tmp_path: Path) -> None:
    """A cell over the csv module's default 128 KiB limit is a long document, not an error."""
    data = tmp_path / "docs.csv"
    long_text = "word " * 40_000  # 200 kB
    data.write_text(f'text,label\nshort one,a\n"{long_text}",b\n')
    r = modelyard(
        "data", "validate", str(data), "--format", "classification", "--json", home=tmp_path / "h"
    )
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["rows"] == 2
    assert report["lengths"]["stats"]["max"] >= 40_000


def test_csv_with_an_unclosed_quote_names_its_line_and_loses_no_rows(tmp_path: Path) -> None:
    """An unclosed quote used to swallow the rest of the file into one value silently."""
    data = tmp_path / "tickets.csv"
    data.write_text('text,label\nfine,a\n"unclosed,b\nnext row,c\nlast row,d\n')
    r = modelyard("data", "validate", str(data), "--format", "classification", home=tmp_path / "h")
    assert r.code == 2, r.out
    line = _error_line(r.err)
    assert "tickets.csv line 3 is not valid CSV" in line
    assert "quot" in line


# -- data: values that are not text ----------------------------------------------------------


def test_binary_and_nan_cells_are_reported_not_read_as_text(tmp_path: Path) -> None:
    """A binary Parquet column used to validate clean (and train as "b'...'"); a NaN cell
    (pandas' missing value) used to count as the text "NaN"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "reviews.parquet"
    table = pa.table(
        {
            "text": pa.array([b"great product", b"broke in a day", "fine"], pa.binary()),
            "label": pa.array([1.0, float("nan"), 2.0]),
        }
    )
    pq.write_table(table, data)
    r = modelyard(
        "data", "validate", str(data), "--format", "classification", "--json", home=tmp_path / "h"
    )
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert [(p["row"], p["field"]) for p in report["invalid_rows"]] == [
        (1, "text"),
        (2, "text"),
        (3, "text"),
    ]
    assert "not bytes" in report["invalid_rows"][0]["problem"]
    assert {"row": 2, "field": "label", "problem": "empty"} in report["empty_fields"]
    assert report["labels"]["counts"] == {"1.0": 1, "2.0": 1}
    r = modelyard(
        "data", "validate", str(data), "--format", "classification", "--fail-on", "invalid-rows",
        home=tmp_path / "h",
    )  # fmt: skip
    assert r.code == 1, r.out


def test_finetune_refuses_a_row_whose_output_is_a_list(tmp_path: Path) -> None:
    """Training used to learn Python's repr "['network']" for an output that is a list."""
    import yaml

    from modelyard.base import create_tiny_base
    from modelyard.data import DOMAINS, domain_corpus, synthetic_domain

    base = create_tiny_base(
        domain_corpus(DOMAINS, 100, seed=0),
        tmp_path / "base",
        steps=2,
        batch_size=4,
        seq_len=32,
        hidden_size=32,
        vocab_size=300,
    ).path
    rows = synthetic_domain("it-support", 12, seed=0)
    rows[3] = {**rows[3], "output": ["network", "accounts"]}
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "base_model": str(base),
        "data": {"train": str(train), "eval_fraction": 0.25},
        "training": {"max_steps": 1, "batch_size": 2},
        "evaluation": {"metrics": ["exact_match"], "max_new_tokens": 2},
        "registry": {"model": "helpdesk"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    r = modelyard("finetune", "-c", str(tmp_path / "config.yaml"), home=tmp_path / "h")
    assert r.code == 2, r.out + r.err
    line = _error_line(r.err)
    assert "'output' must be text, not a list" in line


# -- registry: export, import ----------------------------------------------------------------


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A home holding sup:1, an adapter imported with `modelyard registry import`."""
    from modelyard.base import create_tiny_base
    from modelyard.data import DOMAINS, domain_corpus
    from tinymodels import QUICK_BASE, random_adapter

    root = tmp_path_factory.mktemp("imported")
    base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), root / "base", **QUICK_BASE).path
    adapter = random_adapter(base, root / "adapter", 1, target_modules=["q_proj", "v_proj"])
    home = root / "home"
    r = modelyard(
        "registry", "import", str(adapter), "--name", "sup", "--base-model", str(base), home=home
    )
    assert r.code == 0, r.err
    return {"home": home, "base": base, "adapter": adapter}


@pytest.fixture
def home(imported: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the imported home, for tests that change it."""
    return Path(shutil.copytree(imported["home"], tmp_path / "home"))


def test_export_to_a_file_or_under_one_is_one_error(
    imported: dict[str, Path], tmp_path: Path
) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for out, said in [
        (a_file, "notes.txt is a file"),
        (a_file / "sub", "notes.txt is a file"),
    ]:
        r = modelyard("registry", "export", "sup:1", "--out", str(out), home=imported["home"])
        assert r.code == 2, r.out + r.err
        assert said in _error_line(r.err)
    assert a_file.read_text() == "keep me"


def test_import_for_a_tenant_never_lands_in_another_tenants_model(
    imported: dict[str, Path],
    home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--tenant used to be ignored when the model existed: acme's adapter became a version
    of globex's model (or of a shared one), and nothing said so. (In this process: nine
    subprocesses cost 40 s of CI.)"""
    from clihelp import Result
    from modelyard.cli import main

    monkeypatch.setenv("MODELYARD_HOME", str(home))

    def modelyard(*args: str, home: Path) -> Result:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    for tenant in ("acme", "globex"):
        assert modelyard("tenants", "create", tenant, home=home).code == 0
    args = ("--base-model", str(imported["base"]))
    r = modelyard(
        "registry", "import", str(imported["adapter"]), "--name", "globex-bot",
        "--tenant", "globex", *args, home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    for name, owner in [("globex-bot", "tenant 'globex'"), ("sup", "no tenant")]:
        r = modelyard(
            "registry", "import", str(imported["adapter"]), "--name", name,
            "--tenant", "acme", *args, home=home,
        )  # fmt: skip
        assert r.code == 1, r.out
        assert f"'{name}' belongs to {owner}, not to tenant 'acme'" in _error_line(r.err)
    r = modelyard(
        "registry", "upstream", "globex-bot", "--base-url", "http://127.0.0.1:9/v1",
        "--upstream-model", "gpt-x", "--tenant", "acme", home=home,
    )  # fmt: skip
    assert r.code == 1, r.out
    assert "belongs to tenant 'globex'" in _error_line(r.err)
    listed = json.loads(modelyard("registry", "list", "--json", home=home).out)
    latest = {m["name"]: m["latest_version"] for m in listed}
    assert latest == {"globex-bot": 1, "sup": 1}
    # the owner's own imports, and an admin's import without --tenant, still join
    r = modelyard(
        "registry", "import", str(imported["adapter"]), "--name", "globex-bot",
        "--tenant", "globex", *args, home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    r = modelyard(
        "registry", "import", str(imported["adapter"]), "--name", "globex-bot", *args, home=home
    )
    assert r.code == 0, r.err


def test_import_refusals_say_what_fixes_them(imported: dict[str, Path], home: Path) -> None:
    """Every file_kind refusal used to end "Remove the file from the artifact. Allowed: ...",
    even for an adapter imported as --kind full or a config.json that is not JSON."""
    args = ("--base-model", str(imported["base"]))
    r = modelyard(
        "registry", "import", str(imported["adapter"]), "--name", "x", "--kind", "full", *args,
        home=home,
    )  # fmt: skip
    assert r.code == 1, r.out
    line = _error_line(r.err)
    assert "import it with --kind adapter" in line
    assert "Remove the file" not in line

    broken = Path(shutil.copytree(imported["adapter"], home.parent / "broken"))
    (broken / "adapter_config.json").write_text("{not json")
    r = modelyard("registry", "import", str(broken), "--name", "x", *args, home=home)
    assert r.code == 1, r.out
    line = _error_line(r.err)
    assert "adapter_config.json: is not valid UTF-8 JSON" in line
    assert "save_pretrained" in line and "Remove the file from the artifact" not in line
    listed = json.loads(modelyard("registry", "list", "--json", home=home).out)
    assert [m["name"] for m in listed] == ["sup"]  # nothing registered


def test_finetune_on_parquet_with_a_date_column(imported: dict[str, Path], home: Path) -> None:
    """Storing the dataset version used to crash (a traceback: datetime is not JSON
    serializable) on any Parquet file with a date or timestamp column, kept as extra field."""
    import pandas as pd
    import yaml

    from modelyard.data import synthetic_domain

    frame = pd.DataFrame(synthetic_domain("it-support", 12, seed=0))
    frame["created"] = pd.Timestamp("2026-01-01")
    data = home.parent / "tickets.parquet"
    frame.to_parquet(data)
    config = {
        "base_model": str(imported["base"]),
        "data": {"train": str(data), "eval_fraction": 0.25},
        "training": {"max_steps": 1, "batch_size": 2},
        "evaluation": {"metrics": ["exact_match"], "max_new_tokens": 2},
        "registry": {"model": "dated"},
    }
    (home.parent / "dated.yaml").write_text(yaml.safe_dump(config))
    r = modelyard("finetune", "-c", str(home.parent / "dated.yaml"), home=home)
    assert r.code == 0, r.err
    assert "registered dated:1" in r.out


def test_split_into_a_directory_that_cannot_be_made_is_one_error(tmp_path: Path) -> None:
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": "a"}) + "\n" for i in range(4)))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    r = modelyard(
        "data", "split", str(data), "--format", "classification", "--out-dir",
        str(a_file / "splits"), home=tmp_path / "h",
    )  # fmt: skip
    assert r.code == 2, r.out
    assert "cannot write the split to" in _error_line(r.err)
    assert a_file.read_text() == "keep me"


def test_import_description_reaches_the_card_and_is_never_dropped(
    imported: dict[str, Path], home: Path
) -> None:
    """import_version took a description the CLI never offered, while the card of every
    imported model told the user to "set registry.description" (a fine-tune setting)."""
    args = (str(imported["adapter"]), "--base-model", str(imported["base"]))
    r = modelyard(
        "registry", "import", *args, "--name", "router", "--description", "Routes IT tickets.",
        home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    card = modelyard("registry", "card", "router:1", home=home).out
    assert "## Intended use\n\nRoutes IT tickets." in card
    r = modelyard(
        "registry", "import", *args, "--name", "router", "--description", "Something else.",
        home=home,
    )  # fmt: skip
    assert r.code == 2, r.out
    assert "exists already, described as 'Routes IT tickets.'" in _error_line(r.err)
    card = modelyard("registry", "card", "sup:1", home=home).out
    assert "registry import --description" in card
    assert "No scores are recorded" in card  # not "the held-out rows recorded above"
    listed = json.loads(modelyard("registry", "list", "router", "--json", home=home).out)
    assert [v["version"] for v in listed] == [1]


def test_tag_remove_of_a_missing_key_and_multiline_values_are_refused(home: Path) -> None:
    """`--remove tem` (for team) used to succeed silently, audited as a removal."""
    assert modelyard("registry", "tag", "sup:1", "team=claims", home=home).code == 0
    r = modelyard("registry", "tag", "sup:1", "--remove", "tem", home=home)
    assert r.code == 2, r.out
    line = _error_line(r.err)
    assert "sup:1 has no tag 'tem' to remove" in line and "'team'" in line
    r = modelyard("registry", "tag", "sup:1", "note=line one\nline two", home=home)
    assert r.code == 2, r.out
    assert "control character" in _error_line(r.err)
    r = modelyard("registry", "tag", "sup:1", "--remove", "team", "--json", home=home)
    assert r.code == 0, r.err
    assert json.loads(r.out)["tags"] == {}


def test_a_file_in_another_encoding_names_it_and_the_line(tmp_path: Path) -> None:
    """The error said only "byte 0 cannot be decoded" for Excel's UTF-16 "Unicode text"
    and a byte offset, not a line, for a Latin-1 row."""
    utf16 = tmp_path / "reviews.csv"
    utf16.write_text("text,label\ncafé,x\n", encoding="utf-16")
    r = modelyard("data", "validate", str(utf16), "--format", "classification", home=tmp_path)
    assert r.code == 2, r.out
    assert "reviews.csv is UTF-16 text, not UTF-8" in _error_line(r.err)
    latin = tmp_path / "tickets.jsonl"
    latin.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')
    r = modelyard("data", "validate", str(latin), "--format", "classification", home=tmp_path)
    assert r.code == 2, r.out
    assert "is not UTF-8 text: line 2" in _error_line(r.err)


def test_upstream_url_with_a_credential_is_refused_before_anything_is_stored(
    tmp_path: Path,
) -> None:
    """`--base-url https://user:sk-...@host/v1` (or `?key=sk-...`) used to be registered:
    the key went into the spec artifact, the lineage and the audit chain, for good."""
    home = tmp_path / "home"
    for url, where in [
        ("https://svc:sk-live-123@llm.example/v1", "user:password@"),
        ("https://llm.example/v1?key=sk-live-123", "the query parameter 'key'"),
    ]:
        r = modelyard(
            "registry", "upstream", "gw", "--base-url", url, "--upstream-model", "m", home=home
        )
        assert r.code == 2, r.out
        assert f"holds a credential ({where})" in _error_line(r.err)
    audit = modelyard("audit", "export", "--format", "jsonl", home=home)
    assert audit.code == 0, audit.err
    assert "sk-live-123" not in audit.out
    r = modelyard(
        "registry", "upstream", "gw", "--upstream-model", "m", "--api-key-env", "GW_KEY",
        "--base-url", "https://llm.example/openai?api-version=2024-02-01", home=home,
    )  # fmt: skip
    assert r.code == 0, r.err


def test_a_csv_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    """``text,label,text`` kept the second text's value in every row and said nothing."""
    path = tmp_path / "rows.csv"
    path.write_text("text,label,text\nfirst,hardware,second\n", encoding="utf-8")
    r = modelyard("data", "validate", str(path), "--format", "classification",
                  home=tmp_path / "h")  # fmt: skip
    assert r.code == 2, (r.code, r.err)
    line = _error_line(r.err)
    assert "names column 'text' twice (columns 1 and 3)" in line, line
