"""MkDocs hooks: the generated reference pages and the benchmark pages (see ``tools/docgen.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docgen  # noqa: E402


def on_files(files: Files, config) -> Files:
    """Add the pages generated from the code and split ``benchmarks.md`` into one page per benchmark."""
    generated = {
        "reference/cli.md": docgen.cli_markdown(),
        "reference/configuration.md": docgen.config_markdown(),
        "reference/metrics.md": docgen.metrics_markdown(),
    }
    schema = docgen.gateway_openapi()
    generated["reference/http.md"] = docgen.http_markdown(schema)
    generated["reference/openapi.json"] = json.dumps(schema, indent=2, ensure_ascii=False)
    source = Path(config["docs_dir"]) / "benchmarks.md"
    for name, text in docgen.benchmark_pages(source.read_text(encoding="utf-8")).items():
        generated[f"benchmarks/{name}"] = text
    old = files.get_file_from_path("benchmarks.md")
    if old is not None:
        files.remove(old)  # the single source: published as the pages above
    for uri, text in generated.items():
        files.append(File.generated(config, uri, content=text))
    return files
