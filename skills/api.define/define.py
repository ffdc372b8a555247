#!/usr/bin/env python3
"""api.define: write an OpenAPI 3.1 document (and, when asked, AsyncAPI 3.0) for a service's resources.

Owns the handler: arguments, where the files go (inside the workspace, atomically, never silently
over an existing file) and the result. Inputs are checked in ``apidef_model``; the documents are
built by ``apidef_openapi`` and ``apidef_asyncapi``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import apidef_asyncapi
import apidef_openapi
from apidef_model import PAGINATION_STYLES, PROPERTY_CASES, parse_service

from betty_mcp.kit.skillkit import (
    SkillError,
    json_arg,
    parser,
    run,
    workspace,
    workspace_path,
    write_text_atomic,
)

argparser = parser("Write an OpenAPI 3.1 (and optionally AsyncAPI 3.0) document for a service.")
argparser.add_argument("service_name", help="e.g. 'order-service' or 'Order Service'")
argparser.add_argument("resources", type=json_arg, help="JSON array of names or {name, fields, operations}")
argparser.add_argument("--version", default="1.0.0", help="the API version (info.version)")
argparser.add_argument("--description", default=None)
argparser.add_argument("--server_url", default=None)
argparser.add_argument("--output_dir", default="api")
argparser.add_argument("--pagination", choices=PAGINATION_STYLES, default="offset")
argparser.add_argument("--property_case", choices=PROPERTY_CASES, default="camel")
argparser.add_argument("--asyncapi", action="store_true", help="also write an AsyncAPI 3.0 document")
argparser.add_argument("--overwrite", action="store_true", help="replace existing documents")


def to_yaml(doc: dict[str, Any]) -> str:
    import yaml

    base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    class Dumper(base):  # type: ignore[misc, valid-type]
        def ignore_aliases(self, data: Any) -> bool:  # a shared schema dict is written out, not as &id001
            return True

    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=110)


def shown(path: Path) -> str:
    """Workspace-relative when inside it: ready to pass to api.validate as spec_path."""
    return str(path.relative_to(workspace())) if path.is_relative_to(workspace()) else str(path)


def handle(args: argparse.Namespace) -> dict[str, Any]:
    service = parse_service(
        service_name=args.service_name,
        version=args.version,
        resources=args.resources,
        description=args.description,
        server_url=args.server_url,
        pagination=args.pagination,
        property_case=args.property_case,
    )
    out_dir = workspace_path(args.output_dir, kind="output_dir")
    if out_dir.exists() and not out_dir.is_dir():
        raise SkillError(f"output_dir '{args.output_dir}' is a file, not a directory", code="not_a_directory")
    openapi = apidef_openapi.build(service)
    documents = {out_dir / f"{service.slug}.openapi.yaml": openapi}
    if args.asyncapi:
        documents[out_dir / f"{service.slug}.asyncapi.yaml"] = apidef_asyncapi.build(service)
    existing = [shown(path) for path in documents if path.exists()]
    if existing and not args.overwrite:
        raise SkillError(f"{', '.join(existing)} already exists; pass overwrite to replace it", code="exists")
    for path, doc in documents.items():
        write_text_atomic(path, to_yaml(doc))
    paths, operations = apidef_openapi.counts(openapi)
    written = [shown(path) for path in documents]
    result: dict[str, Any] = {
        "openapi_path": written[0],
        "files": written,
        "paths": paths,
        "operations": operations,
        "resources": [
            {
                "name": "-".join(r.words),
                "plural": "-".join(r.plural_words),
                "schema": r.schema,
                "collection_path": r.collection_path,
                "item_path": r.item_path,
                "operations": list(r.operations),
            }
            for r in service.resources
        ],
    }
    if args.asyncapi:
        result["asyncapi_path"] = written[1]
    return result


if __name__ == "__main__":
    run(handle, argparser)
