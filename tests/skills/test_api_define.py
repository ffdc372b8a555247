"""api.define: generated OpenAPI/AsyncAPI documents, input checks, writes, and the api.validate round trip."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from betty_mcp.run.envelope import last_json_document, normalise
from tests.conftest import ROOT, stdio_client

SKILL_DIR = ROOT / "skills" / "api.define"
HANDLER = SKILL_DIR / "define.py"
VALIDATOR = ROOT / "skills" / "api.validate" / "validate.py"


def _load_handler() -> Any:
    sys.path.insert(0, str(SKILL_DIR))
    spec = importlib.util.spec_from_file_location("api_define_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


define = _load_handler()
import apidef_model  # noqa: E402 - the skill folder is on sys.path once the handler is loaded


@pytest.fixture
def ws(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BETTY_WORKSPACE", str(workspace))
    monkeypatch.delenv("BETTY_ALLOWED_ROOTS", raising=False)
    return workspace


def generate(service: str, resources: Any, *options: str) -> dict[str, Any]:
    args = define.argparser.parse_args([service, json.dumps(resources), *options])
    return define.handle(args)


def refused(service: str, resources: Any, *options: str) -> define.SkillError:
    with pytest.raises(define.SkillError) as exc:
        generate(service, resources, *options)
    return exc.value


def read(workspace: Path, relative: str) -> dict[str, Any]:
    return yaml.safe_load((workspace / relative).read_text())


def run_script(script: Path, workspace: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(script), *argv],
        cwd=workspace,
        capture_output=True,
        text=True,
        env={"BETTY_WORKSPACE": str(workspace), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    return proc.returncode, normalise(last_json_document(proc.stdout), proc.returncode)


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def follow(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for token in ref.removeprefix("#/").split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


# -- generation ---------------------------------------------------------------------------


def test_one_resource(ws: Path) -> None:
    result = generate("order-service", ["order"])
    assert result == {
        "openapi_path": "api/order-service.openapi.yaml",
        "files": ["api/order-service.openapi.yaml"],
        "paths": 2,
        "operations": 5,
        "resources": [
            {
                "name": "order",
                "plural": "orders",
                "schema": "Order",
                "collection_path": "/orders",
                "item_path": "/orders/{orderId}",
                "operations": ["list", "get", "create", "update", "delete"],
            }
        ],
    }
    doc = read(ws, result["openapi_path"])
    assert doc["openapi"] == "3.1.0" and doc["info"]["version"] == "1.0.0"
    assert doc["info"]["title"] == "Order Service API"
    assert list(doc["paths"]) == ["/orders", "/orders/{orderId}"]
    assert list(doc["paths"]["/orders"]) == ["get", "post"]
    assert list(doc["paths"]["/orders/{orderId}"]) == ["parameters", "get", "patch", "delete"]
    ops = [o["operationId"] for p in doc["paths"].values() for m, o in p.items() if m != "parameters"]
    assert sorted(ops) == ["createOrder", "deleteOrder", "getOrder", "listOrders", "updateOrder"]
    listing = doc["paths"]["/orders"]["get"]
    assert [p["$ref"] for p in listing["parameters"]] == [
        "#/components/parameters/Limit",
        "#/components/parameters/Offset",
    ]
    assert set(listing["responses"]) == {"200", "400", "401", "500"}
    assert set(doc["paths"]["/orders/{orderId}"]["delete"]["responses"]) == {"204", "401", "404", "500"}
    schemas = doc["components"]["schemas"]
    assert set(schemas) == {"Problem", "Pagination", "Order", "OrderCreate", "OrderUpdate", "OrderList"}
    assert schemas["Order"]["required"] == ["id", "name", "createdAt", "updatedAt"]  # default fields
    assert schemas["OrderList"]["properties"]["items"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Order"},
    }
    not_found = doc["components"]["responses"]["NotFound"]["content"]
    assert not_found["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert set(schemas["Problem"]["properties"]) == {"type", "title", "status", "detail", "instance"}
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["servers"] == [
        {"url": "https://api.example.com/order-service/v1", "description": "Production"}
    ]
    assert all(
        ref in {f"#/components/{k}/{n}" for k, t in doc["components"].items() for n in t} for ref in refs(doc)
    )


def test_three_resources_with_fields_and_operations(ws: Path) -> None:
    resources = [
        {
            "name": "order-item",
            "fields": {
                "quantity": "integer",
                "unit_price": "number",
                "note": "string?",
                "tags": "string[]?",
                "shipped_on": "date?",
            },
        },
        {"name": "category", "operations": ["list", "get"]},
        {"name": "person", "fields": {"email": "email"}, "operations": ["create", "delete"]},
    ]
    result = generate("Shop", resources, "--version", "2.1.0", "--output_dir", "specs/v2")
    assert result["openapi_path"] == "specs/v2/shop.openapi.yaml"
    assert (result["paths"], result["operations"]) == (6, 9)
    doc = read(ws, result["openapi_path"])
    assert list(doc["paths"]) == [
        "/order-items",
        "/order-items/{orderItemId}",
        "/categories",
        "/categories/{categoryId}",
        "/people",
        "/people/{personId}",
    ]
    assert list(doc["paths"]["/people/{personId}"]) == ["parameters", "delete"]
    assert doc["paths"]["/order-items"]["get"]["operationId"] == "listOrderItems"
    item = doc["components"]["schemas"]["OrderItem"]
    assert list(item["properties"]) == [
        "id",
        "quantity",
        "unitPrice",
        "note",
        "tags",
        "shippedOn",
        "createdAt",
        "updatedAt",
    ]
    assert item["required"] == ["id", "quantity", "unitPrice", "createdAt", "updatedAt"]
    assert item["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert item["properties"]["shippedOn"] == {"type": "string", "format": "date"}
    assert doc["components"]["schemas"]["OrderItemUpdate"]["minProperties"] == 1
    assert "required" not in doc["components"]["schemas"]["OrderItemUpdate"]
    assert [t["name"] for t in doc["tags"]] == ["order-items", "categories", "people"]
    assert doc["info"]["version"] == "2.1.0" and doc["servers"][0]["url"].endswith("/shop/v2")


def test_snake_case_and_cursor_pagination(ws: Path) -> None:
    result = generate(
        "shop",
        [{"name": "lineItem", "fields": {"unitPrice": "number"}}],
        "--property_case",
        "snake",
        "--pagination",
        "cursor",
    )
    doc = read(ws, result["openapi_path"])
    assert "/line-items/{line_item_id}" in doc["paths"]
    assert list(doc["components"]["schemas"]["LineItem"]["properties"]) == [
        "id",
        "unit_price",
        "created_at",
        "updated_at",
    ]
    assert set(doc["components"]["parameters"]) == {"Limit", "Cursor"}
    pagination = doc["components"]["schemas"]["Pagination"]["properties"]
    assert pagination["next_cursor"] == {"type": ["string", "null"]}
    code, validated = run_script(
        VALIDATOR, ws, result["openapi_path"], "--property_case", "snake", "--strict", "--rule_set", "all"
    )
    assert code == 0 and validated["valid"] and validated["warnings"] == [] and validated["notes"] == []


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("order", "orders"),
        ("category", "categories"),
        ("key", "keys"),
        ("address", "addresses"),
        ("box", "boxes"),
        ("status", "statuses"),
        ("analysis", "analyses"),
        ("person", "people"),
        ("child", "children"),
        ("news", "news"),
        ("leaf", "leaves"),
        ("photo", "photos"),
        ("hero", "heroes"),
        ("branch", "branches"),
        ("index", "indices"),
    ],
)
def test_plural(word: str, expected: str) -> None:
    assert apidef_model.plural(word) == expected


def test_irregular_plurals_in_paths(ws: Path) -> None:
    result = generate("crm", ["person", "company", "address", {"name": "cactus", "plural": "cacti"}])
    collections = [r["collection_path"] for r in result["resources"]]
    assert collections == ["/people", "/companies", "/addresses", "/cacti"]
    items = [r["item_path"] for r in result["resources"]]
    assert items[:2] == ["/people/{personId}", "/companies/{companyId}"]


def test_asyncapi_document(ws: Path) -> None:
    result = generate(
        "shop", ["order", {"name": "category", "operations": ["list", "get", "delete"]}], "--asyncapi"
    )
    assert result["asyncapi_path"] == "api/shop.asyncapi.yaml"
    assert result["files"] == ["api/shop.openapi.yaml", "api/shop.asyncapi.yaml"]
    doc = read(ws, result["asyncapi_path"])
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["version"] == "1.0.0"
    assert list(doc["channels"]) == ["orderCreated", "orderUpdated", "orderDeleted", "categoryDeleted"]
    assert doc["channels"]["orderCreated"]["address"] == "shop.order.created"
    assert set(doc["operations"]) == {
        "sendOrderCreated",
        "sendOrderUpdated",
        "sendOrderDeleted",
        "sendCategoryDeleted",
    }
    for name, op in doc["operations"].items():
        assert op["action"] == "send"
        channel = follow(doc, op["channel"]["$ref"])
        [message_ref] = op["messages"]
        assert message_ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), name
        assert follow(doc, message_ref["$ref"]) in channel["messages"].values()
    for ref in refs(doc):
        follow(doc, ref)  # every reference resolves
    created = doc["components"]["schemas"]["OrderCreatedEvent"]
    assert created["required"] == ["eventId", "occurredAt", "data"]
    assert created["properties"]["data"] == {"$ref": "#/components/schemas/Order"}
    deleted = doc["components"]["schemas"]["CategoryDeletedEvent"]["properties"]["data"]
    assert deleted["required"] == ["id"]
    assert doc["components"]["messages"]["OrderUpdated"]["payload"] == {
        "$ref": "#/components/schemas/OrderUpdatedEvent"
    }


def test_no_asyncapi_unless_asked(ws: Path) -> None:
    result = generate("shop", ["order"])
    assert "asyncapi_path" not in result and not (ws / "api" / "shop.asyncapi.yaml").exists()


def test_yaml_has_no_anchors(ws: Path) -> None:
    result = generate("shop", [{"name": "order", "fields": {"total": "number"}}], "--asyncapi")
    for path in result["files"]:
        text = (ws / path).read_text()
        assert "&id" not in text and "*id" not in text


# -- input checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ([], "resources must be a non-empty array of names"),
        ("order", "got str 'order'"),
        (["Order Item!"], "resources[0]: name 'Order Item!' is not a resource name"),
        (["order", 7], "resources[1] must be a name or an object with 'name', got int"),
        (
            [{"name": "order", "fields": {"total": "money"}}],
            "resources[0] ('order'): field 'total' has unknown type 'money'; known types: string, integer",
        ),
        ([{"name": "order", "fields": {"total": 5}}], "resources[0] ('order'): field 'total' has type 5"),
        ([{"name": "order", "fields": {}}], "resources[0] ('order'): fields must be a non-empty object"),
        ([{"name": "order", "fields": {"id": "uuid"}}], "field 'id' is generated on every resource"),
        (
            [{"name": "order", "fields": {"unit_price": "number", "unitPrice": "number"}}],
            "fields 'unitPrice' and another one are both 'unitPrice' in camel case",
        ),
        ([{"name": "order", "operations": ["list", "purge"]}], "unknown operation(s) 'purge'"),
        ([{"name": "order", "operations": []}], "operations must be a non-empty array"),
        ([{"name": "order", "verbs": ["list"]}], "resources[0] has unknown key(s) verbs"),
        (
            ["orders"],
            "resources[0] ('orders'): 'orders' looks plural; name resources in the singular (e.g. 'order')",
        ),
        (
            ["order", "Order"],
            "resources[1] ('order') clashes with resources[0] ('order'): both generate Order",
        ),
        (
            ["order", "order-list"],
            "resources[1] ('order list') clashes with resources[0] ('order'): both generate OrderList",
        ),
        (["problem"], "reserved for a shared schema"),
    ],
)
def test_bad_resources(ws: Path, resources: Any, message: str) -> None:
    error = refused("shop", resources)
    assert error.code == "invalid_input"
    assert message in error.message
    assert not (ws / "api").exists()


@pytest.mark.parametrize(
    ("service", "options", "message"),
    [
        ("shop!", (), "service_name 'shop!' is not a name"),
        ("shop", ("--version", "one"), "version 'one' is not a version number"),
        ("shop", ("--server_url", "ftp://x"), "server_url 'ftp://x' is not an http(s) URL"),
    ],
)
def test_bad_service_options(ws: Path, service: str, options: tuple[str, ...], message: str) -> None:
    assert message in refused(service, ["order"], *options).message


def test_output_dir_outside_workspace_is_refused(ws: Path) -> None:
    error = refused("shop", ["order"], "--output_dir", "../elsewhere")
    assert error.code == "path_outside_workspace" and "outside the workspace" in error.message
    assert not (ws.parent / "elsewhere").exists()
    error = refused("shop", ["order"], "--output_dir", "/tmp")
    assert error.code == "path_outside_workspace"


def test_existing_documents_need_overwrite(ws: Path) -> None:
    generate("shop", ["order"])
    (ws / "api" / "shop.openapi.yaml").write_text("hand edited\n")
    error = refused("shop", ["order"], "--asyncapi")
    assert error.code == "exists" and "api/shop.openapi.yaml already exists" in error.message
    assert (ws / "api" / "shop.openapi.yaml").read_text() == "hand edited\n"
    assert not (ws / "api" / "shop.asyncapi.yaml").exists()  # nothing written when one is refused
    generate("shop", ["order"], "--asyncapi", "--overwrite")
    assert read(ws, "api/shop.openapi.yaml")["openapi"] == "3.1.0"
    (ws / "file").write_text("x")
    assert refused("shop", ["order"], "--output_dir", "file").code == "not_a_directory"


# -- round trip through api.validate ------------------------------------------------------


@pytest.mark.parametrize(
    "resources",
    [
        ["order"],
        [
            "order",
            {
                "name": "category",
                "fields": {"title": "string", "parentId": "uuid?"},
                "operations": ["list", "get"],
            },
            {
                "name": "person",
                "fields": {"email": "email", "born": "date?"},
                "operations": ["create", "update", "delete"],
            },
        ],
    ],
)
def test_generated_document_passes_api_validate(ws: Path, resources: list[Any]) -> None:
    code, result = run_script(HANDLER, ws, "shop", json.dumps(resources))
    assert code == 0 and result["ok"]
    code, validated = run_script(VALIDATOR, ws, result["openapi_path"])
    assert code == 0 and validated["valid"] is True
    assert validated["spec_version"] == "3.1.0"
    assert validated["errors"] == [] and validated["warnings"] == []
    code, strictest = run_script(VALIDATOR, ws, result["openapi_path"], "--rule_set", "all", "--strict")
    assert code == 0 and strictest["errors"] == [] and strictest["notes"] == []


def test_script_reports_bad_input(ws: Path) -> None:
    code, result = run_script(HANDLER, ws, "shop", '["Order Item!"]')
    assert code == 1 and result["ok"] is False
    assert result["errors"][0]["message"].startswith("resources[0]: name 'Order Item!'")
    code, result = run_script(HANDLER, ws, "shop", "[order]")
    assert code == 1 and result["errors"][0]["code"] == "bad_arguments"
    assert "not valid JSON" in result["errors"][0]["message"]


@pytest.mark.anyio
async def test_define_then_validate_over_mcp(workspace: Path) -> None:
    async with stdio_client(workspace, fixtures=False) as client:
        defined = await client.call_tool(
            "api_define",
            {
                "service_name": "Order Service",
                "asyncapi": True,
                "resources": ["order", {"name": "customer", "fields": {"email": "email"}}],
            },
        )
        assert not defined.is_error, defined.structured_content
        spec_path = defined.structured_content["openapi_path"]
        validated = await client.call_tool("api_validate", {"spec_path": spec_path, "strict": True})
        outside = await client.call_tool(
            "api_define", {"service_name": "x", "resources": ["order"], "output_dir": "../outside"}
        )
    data = defined.structured_content
    assert (data["paths"], data["operations"]) == (4, 10)
    assert data["asyncapi_path"] == "api/order-service.asyncapi.yaml"
    assert (workspace / data["openapi_path"]).is_file() and (workspace / data["asyncapi_path"]).is_file()
    assert not validated.is_error and validated.structured_content["valid"] is True
    assert validated.structured_content["warnings"] == []
    assert outside.is_error and "outside the workspace" in outside.structured_content["errors"][0]["message"]
