"""Settings document themselves: every field has a description, and the operations guide's table and
`ranet serve --help` are generated from the model, so neither can drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ranet_serve.cli import app
from ranet_serve.settings import Settings
from ranet_serve.settings_doc import (
    END_MARKER,
    START_MARKER,
    main,
    setting_docs,
    settings_markdown,
    with_settings_table,
)

OPERATIONS_DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def test_every_setting_says_what_it_does() -> None:
    missing = [name for name, info in Settings.model_fields.items() if len(info.description or "") < 20]
    assert not missing, f"give these settings Field(description=...): {missing}"


def test_every_setting_is_listed_with_its_environment_variable_and_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RANET_GRPC_PORT", raising=False)  # tests/conftest.py turns gRPC off by default
    docs = {doc.name: doc for doc in setting_docs()}
    assert list(docs) == list(Settings.model_fields)
    assert docs["port"].env == "RANET_PORT" and docs["port"].default == "8080"
    assert docs["run_dir"].default == "unset" and docs["batch_close_when_idle"].default == "true"
    assert docs["max_queue_delay_ms"].default == "2" and docs["agreement_sample_fraction"].default == "0.01"
    assert docs["model_store"].default == "model_store"
    assert docs["backend"].choices == ("onnxruntime", "torchscript", "eager") and docs["port"].choices == ()
    # The defaults are what the environment would have to say to get them.
    for doc in docs.values():
        if doc.default != "unset" and doc.name not in {"api_key", "admin_api_key"}:
            explicit = Settings(**{doc.name: doc.default})  # type: ignore[arg-type]
            assert getattr(explicit, doc.name) == getattr(Settings(), doc.name), doc.name


def test_the_operations_guide_holds_the_generated_settings_table() -> None:
    text = OPERATIONS_DOC.read_text()
    assert text == with_settings_table(text), "docs/operations.md: settings table out of date; run make docs"
    table = text[text.index(START_MARKER) : text.index(END_MARKER)]
    rows = re.findall(r"^\| `(RANET_\w+)` \| (.+?) \|", table, flags=re.MULTILINE)
    assert [env for env, _ in rows] == [doc.env for doc in setting_docs()]
    assert dict(rows)["RANET_MAX_BATCH_SIZE"] == "`32`" and dict(rows)["RANET_API_KEY"] == "unset"


def test_the_table_escapes_what_markdown_would_swallow() -> None:
    table = settings_markdown()
    assert "`<model>/<version>/manifest.json`" in table  # not an HTML tag
    assert "`RANET_BATCH_CLOSE_WHEN_IDLE`" in table
    for line in table.splitlines():
        assert len(re.findall(r"(?<!\\)\|", line)) == 4, line  # three cells per row, pipes escaped


def test_make_docs_rewrites_a_stale_table_and_check_reports_it(tmp_path: Path) -> None:
    document = tmp_path / "guide.md"
    document.write_text(f"# Guide\n\n{START_MARKER}\n| stale |\n{END_MARKER}\n\nAfter.\n")
    assert main(["--check", str(document)]) == 1
    assert "| stale |" in document.read_text()  # --check never writes
    assert main([str(document)]) == 0
    rewritten = document.read_text()
    assert "| stale |" not in rewritten and "| `RANET_PORT` | `8080` |" in rewritten
    assert rewritten.startswith("# Guide\n") and rewritten.endswith(f"{END_MARKER}\n\nAfter.\n")
    assert main(["--check", str(document)]) == 0
    with pytest.raises(ValueError, match="settings-table"):
        with_settings_table("# no markers\n")


def test_serve_help_lists_every_setting_with_its_variable_default_and_option() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines to the terminal's width
    for doc in setting_docs():
        assert f"{doc.env} (default {doc.default}" in text, doc.env
    assert "RANET_PORT (default 8080, option --port):" in text
    assert "RANET_ENGINE_PROCESS (default true, option --engine-process / --one-process):" in text
    assert "RANET_API_KEY (default unset, option --api-key-file):" in text
    assert "RANET_BACKEND (default onnxruntime, option --backend)" in text and "(one of: onnxruntime," in text
