"""Tests of the bundled api.compatibility skill: direct handler runs over modified copies of the
real petstore/uspto documents, bad inputs, and calls through the MCP server over stdio."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from betty_mcp.core.catalog import TYPE_ALIASES
from betty_mcp.core.manifests import load_skill_manifest
from betty_mcp.run.envelope import last_json_document, normalise
from tests.conftest import ERAS, OPENAPI_DIR, ROOT, stdio_client

SKILL_DIR = ROOT / "skills" / "api.compatibility"
HANDLER = SKILL_DIR / "check_compatibility.py"
PETSTORE = yaml.safe_load((OPENAPI_DIR / "petstore.yaml").read_text())
USPTO = yaml.safe_load((OPENAPI_DIR / "uspto.yaml").read_text())
PET_BY_ID = "/paths/~1pets~1{petId}/get"
JSON_SCHEMA = "content/application~1json/schema"
CREATE_BODY = f"/paths/~1pets/post/requestBody/{JSON_SCHEMA}"
LIST_200 = f"/paths/~1pets/get/responses/200/{JSON_SCHEMA}"
LIST_PARAMS = "/paths/~1pets/get/parameters"


def run_skill(workspace: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(HANDLER), *args],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BETTY_WORKSPACE": str(workspace), "BETTY_ALLOWED_ROOTS": ""},
    )
    doc = last_json_document(proc.stdout)
    assert isinstance(doc, dict), f"no JSON envelope; stdout={proc.stdout!r} stderr={proc.stderr!r}"
    return proc.returncode, doc


def write(workspace: Path, name: str, doc: Any) -> str:
    text = json.dumps(doc) if name.endswith(".json") else yaml.safe_dump(doc, sort_keys=False)
    (workspace / name).write_text(text)
    return name


def compare(
    workspace: Path, old: dict[str, Any], mutate: Callable[[dict[str, Any]], None], *flags: str
) -> tuple[int, dict[str, Any]]:
    new = copy.deepcopy(old)
    mutate(new)
    return run_skill(workspace, write(workspace, "old.yaml", old), write(workspace, "new.yaml", new), *flags)


def kinds(changes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["kind"], c["location"]) for c in changes]


def data_of(rc: int, doc: dict[str, Any]) -> dict[str, Any]:
    assert rc == 0 and doc["ok"] is True, doc
    return doc["data"]


# -- no change, real documents ---------------------------------------------------------------------

REAL_SPECS = [
    "petstore.yaml",
    "petstore-expanded.yaml",
    "uspto.yaml",
    "link-example.yaml",
    "callback-example.yaml",
    "api-with-examples.yaml",
]


@pytest.mark.parametrize("name", REAL_SPECS)
def test_same_document_is_compatible_with_zero_changes(workspace: Path, name: str) -> None:
    shutil.copy(OPENAPI_DIR / name, workspace / "old.yaml")
    shutil.copy(OPENAPI_DIR / name, workspace / "new.yaml")
    data = data_of(*run_skill(workspace, "old.yaml", "new.yaml"))
    assert data["compatible"] is True
    assert data["breaking_changes"] == [] and data["non_breaking_changes"] == []
    assert data["summary"]["breaking"] == 0 and data["summary"]["non_breaking"] == 0
    declared = str(yaml.safe_load((OPENAPI_DIR / name).read_text())["info"]["version"])
    assert data["old_version"] == data["new_version"] == declared != ""


def test_petstore_to_petstore_expanded(workspace: Path) -> None:
    shutil.copy(OPENAPI_DIR / "petstore.yaml", workspace / "old.yaml")
    shutil.copy(OPENAPI_DIR / "petstore-expanded.yaml", workspace / "new.yaml")
    data = data_of(*run_skill(workspace, "old.yaml", "new.yaml"))
    assert data["compatible"] is False
    assert kinds(data["breaking_changes"]) == [
        ("response-header-removed", "/paths/~1pets/get/responses/200/headers/x-next"),
        ("response-code-removed", "/paths/~1pets/post/responses/201"),
        ("type-changed", "/paths/~1pets~1{id}/get/parameters/0/schema"),
    ]
    non_breaking = kinds(data["non_breaking_changes"])
    assert ("operation-added", "/paths/~1pets~1{id}/delete") in non_breaking
    assert ("parameter-added", "/paths/~1pets/get/parameters/0") in non_breaking
    # /pets/{petId} and /pets/{id} are the same path: no path removed or added
    assert not [k for k, _ in non_breaking + kinds(data["breaking_changes"]) if k.startswith("path-")]
    assert data["summary"]["by_kind"]["type-changed"] == 1


# -- paths and operations --------------------------------------------------------------------------


def test_removed_operation(workspace: Path) -> None:
    data = data_of(*compare(workspace, PETSTORE, lambda d: d["paths"]["/pets"].pop("post")))
    assert data["compatible"] is False
    assert kinds(data["breaking_changes"]) == [("operation-removed", "/paths/~1pets/post")]
    assert data["breaking_changes"][0]["operation"] == "POST /pets"
    assert data["non_breaking_changes"] == []


def test_removed_path(workspace: Path) -> None:
    data = data_of(*compare(workspace, PETSTORE, lambda d: d["paths"].pop("/pets/{petId}")))
    assert kinds(data["breaking_changes"]) == [("path-removed", "/paths/~1pets~1{petId}")]
    assert "GET" in data["breaking_changes"][0]["message"]


def test_added_path_and_operation_are_not_breaking(workspace: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["paths"]["/owners"] = {"get": {"responses": {"200": {"description": "ok"}}}}
        d["paths"]["/pets/{petId}"]["delete"] = {"responses": {"204": {"description": "gone"}}}

    data = data_of(*compare(workspace, PETSTORE, mutate))
    assert data["compatible"] is True
    assert kinds(data["non_breaking_changes"]) == [
        ("operation-added", "/paths/~1pets~1{petId}/delete"),
        ("path-added", "/paths/~1owners"),
    ]


# -- schemas: properties, types, enums -------------------------------------------------------------


def test_renamed_response_field_is_removed_plus_added_at_every_use_site(workspace: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        pet = d["components"]["schemas"]["Pet"]
        pet["properties"] = {("petName" if k == "name" else k): v for k, v in pet["properties"].items()}
        pet["required"] = ["id", "petName"]

    data = data_of(*compare(workspace, PETSTORE, mutate))
    assert kinds(data["breaking_changes"]) == [
        ("response-property-removed", f"{LIST_200}/items/properties/name"),
        ("required-request-property-added", f"{CREATE_BODY}/properties/petName"),
        ("response-property-removed", f"{PET_BY_ID}/responses/200/{JSON_SCHEMA}/properties/name"),
    ]
    removed = data["breaking_changes"][2]
    assert removed["defined_at"] == "/components/schemas/Pet/properties/name"
    assert removed["property"] == "name" and removed["operation"] == "GET /pets/{petId}"
    assert (
        "response-property-added",
        f"{PET_BY_ID}/responses/200/{JSON_SCHEMA}/properties/petName",
    ) in kinds(data["non_breaking_changes"])
    assert ("request-property-removed", f"{CREATE_BODY}/properties/name") in kinds(
        data["non_breaking_changes"]
    )


def test_new_required_query_parameter(workspace: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["paths"]["/pets"]["get"]["parameters"].append(
            {"name": "owner", "in": "query", "required": True, "schema": {"type": "string"}}
        )

    data = data_of(*compare(workspace, PETSTORE, mutate))
    assert kinds(data["breaking_changes"]) == [("required-parameter-added", f"{LIST_PARAMS}/1")]
    assert "owner" in data["breaking_changes"][0]["message"]


def test_optional_parameter_added_or_made_required(workspace: Path) -> None:
    def add_optional(d: dict[str, Any]) -> None:
        d["paths"]["/pets"]["get"]["parameters"].append(
            {"name": "sort", "in": "query", "schema": {"type": "string"}}
        )

    data = data_of(*compare(workspace, PETSTORE, add_optional))
    assert data["compatible"] is True
    assert kinds(data["non_breaking_changes"]) == [("parameter-added", f"{LIST_PARAMS}/1")]

    def make_required(d: dict[str, Any]) -> None:
        d["paths"]["/pets"]["get"]["parameters"][0]["required"] = True

    data = data_of(*compare(workspace, PETSTORE, make_required))
    assert kinds(data["breaking_changes"]) == [("parameter-became-required", f"{LIST_PARAMS}/0")]


def test_changed_property_type(workspace: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["components"]["schemas"]["Pet"]["properties"]["id"] = {"type": "string"}

    data = data_of(*compare(workspace, PETSTORE, mutate))
    assert kinds(data["breaking_changes"]) == [
        ("type-changed", f"{LIST_200}/items/properties/id"),
        ("type-changed", f"{CREATE_BODY}/properties/id"),
        ("type-changed", f"{PET_BY_ID}/responses/200/{JSON_SCHEMA}/properties/id"),
    ]
    change = data["breaking_changes"][2]
    assert (change["old"], change["new"]) == ("integer", "string")
    assert "'id'" in change["message"] and "integer to string" in change["message"]


def test_parameter_type_changed_or_widened(workspace: Path) -> None:
    def to_string(d: dict[str, Any]) -> None:
        d["paths"]["/pets"]["get"]["parameters"][0]["schema"] = {"type": "string"}

    data = data_of(*compare(workspace, PETSTORE, to_string))
    assert kinds(data["breaking_changes"]) == [("type-changed", f"{LIST_PARAMS}/0/schema")]

    def to_number(d: dict[str, Any]) -> None:
        d["paths"]["/pets"]["get"]["parameters"][0]["schema"]["type"] = "number"

    data = data_of(*compare(workspace, PETSTORE, to_number))
    assert data["compatible"] is True
    assert kinds(data["non_breaking_changes"]) == [("request-type-widened", f"{LIST_PARAMS}/0/schema")]


def _with_tag_enum(values: list[str]) -> dict[str, Any]:
    doc = copy.deepcopy(PETSTORE)
    doc["components"]["schemas"]["Pet"]["properties"]["tag"]["enum"] = values
    return doc


def _set_tag_enum(values: list[str]) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["components"]["schemas"]["Pet"]["properties"]["tag"].update(enum=values)


def test_enum_narrowed_breaks_requests_widened_breaks_responses(workspace: Path) -> None:
    old = _with_tag_enum(["dog", "cat", "bird"])
    tag = "properties/tag"
    data = data_of(*compare(workspace, old, _set_tag_enum(["dog", "cat"])))
    assert kinds(data["breaking_changes"]) == [("request-enum-narrowed", f"{CREATE_BODY}/{tag}")]
    assert data["breaking_changes"][0]["removed"] == ["bird"]
    assert ("response-enum-narrowed", f"{PET_BY_ID}/responses/200/{JSON_SCHEMA}/{tag}") in kinds(
        data["non_breaking_changes"]
    )

    old = _with_tag_enum(["dog", "cat"])
    data = data_of(*compare(workspace, old, _set_tag_enum(["dog", "cat", "bird"])))
    assert kinds(data["breaking_changes"]) == [
        ("response-enum-widened", f"{LIST_200}/items/{tag}"),
        ("response-enum-widened", f"{PET_BY_ID}/responses/200/{JSON_SCHEMA}/{tag}"),
    ]
    assert data["breaking_changes"][1]["added"] == ["bird"]
    assert kinds(data["non_breaking_changes"]) == [("request-enum-widened", f"{CREATE_BODY}/{tag}")]


def test_query_parameter_enum_narrowed(workspace: Path) -> None:
    old = copy.deepcopy(PETSTORE)
    old["paths"]["/pets"]["get"]["parameters"].append(
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["available", "sold"]}}
    )
    data = data_of(
        *compare(
            workspace,
            old,
            lambda d: d["paths"]["/pets"]["get"]["parameters"][1]["schema"].update(enum=["available"]),
        )
    )
    assert kinds(data["breaking_changes"]) == [("request-enum-narrowed", f"{LIST_PARAMS}/1/schema")]
    assert "'sold'" in data["breaking_changes"][0]["message"]


def test_read_only_property_is_not_a_request_property(workspace: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        pet = d["components"]["schemas"]["Pet"]
        pet["properties"]["createdAt"] = {"type": "string", "readOnly": True}
        pet["required"].append("createdAt")

    data = data_of(*compare(workspace, PETSTORE, mutate))
    assert data["compatible"] is True
    assert {k for k, _ in kinds(data["non_breaking_changes"])} == {"response-property-added"}


def test_recursive_schema_terminates_and_reports_deep_change(workspace: Path) -> None:
    old = copy.deepcopy(PETSTORE)
    old["components"]["schemas"]["Pet"]["properties"]["children"] = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Pet"},
    }

    def drop_tag(d: dict[str, Any]) -> None:
        d["components"]["schemas"]["Pet"]["properties"].pop("tag")

    data = data_of(*compare(workspace, old, drop_tag))
    removed = [c for c in data["breaking_changes"] if c["operation"] == "GET /pets/{petId}"]
    assert kinds(removed) == [
        ("response-property-removed", f"{PET_BY_ID}/responses/200/{JSON_SCHEMA}/properties/tag")
    ]


def test_shared_component_reported_once_per_response(workspace: Path) -> None:
    old = copy.deepcopy(PETSTORE)
    old["components"]["schemas"]["Person"] = {"type": "object", "properties": {"name": {"type": "string"}}}
    old["components"]["schemas"]["Pet"]["properties"].update(
        owner={"$ref": "#/components/schemas/Person"}, vet={"$ref": "#/components/schemas/Person"}
    )

    def mutate(d: dict[str, Any]) -> None:
        d["components"]["schemas"]["Person"]["properties"]["name"]["type"] = "integer"

    data = data_of(*compare(workspace, old, mutate))
    by_id = [c for c in data["breaking_changes"] if c["operation"] == "GET /pets/{petId}"]
    owner_name = f"{PET_BY_ID}/responses/200/{JSON_SCHEMA}/properties/owner/properties/name"
    assert kinds(by_id) == [("type-changed", owner_name)]
    assert by_id[0]["defined_at"] == "/components/schemas/Person/properties/name"
    assert len(data["breaking_changes"]) == 3  # GET /pets, POST /pets, GET /pets/{petId}: once each


# -- responses -------------------------------------------------------------------------------------


def test_removed_404_response(workspace: Path) -> None:
    fields = "/{dataset}/{version}/fields"
    data = data_of(*compare(workspace, USPTO, lambda d: d["paths"][fields]["get"]["responses"].pop("404")))
    assert kinds(data["breaking_changes"]) == [
        ("response-code-removed", "/paths/~1{dataset}~1{version}~1fields/get/responses/404")
    ]
    assert data["non_breaking_changes"] == []


def test_new_response_code_is_not_breaking(workspace: Path) -> None:
    data = data_of(
        *compare(
            workspace,
            USPTO,
            lambda d: d["paths"]["/"]["get"]["responses"].update({"503": {"description": "maintenance"}}),
        )
    )
    assert data["compatible"] is True
    assert kinds(data["non_breaking_changes"]) == [("response-code-added", "/paths/~1/get/responses/503")]


def test_required_request_property_in_uspto_form(workspace: Path) -> None:
    records = "/{dataset}/{version}/records"
    media = "application~1x-www-form-urlencoded"

    def mutate(d: dict[str, Any]) -> None:
        d["paths"][records]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"][
            "required"
        ].append("rows")

    data = data_of(*compare(workspace, USPTO, mutate))
    assert kinds(data["breaking_changes"]) == [
        (
            "request-property-became-required",
            f"/paths/~1{{dataset}}~1{{version}}~1records/post/requestBody/content/{media}/schema/properties/rows",
        )
    ]


# -- authentication --------------------------------------------------------------------------------


def _with_api_key(doc: dict[str, Any]) -> None:
    doc["components"]["securitySchemes"] = {"api_key": {"type": "apiKey", "in": "header", "name": "X-Key"}}


def test_added_global_security_is_breaking(workspace: Path) -> None:
    old = copy.deepcopy(PETSTORE)
    _with_api_key(old)
    data = data_of(*compare(workspace, old, lambda d: d.update(security=[{"api_key": []}])))
    assert kinds(data["breaking_changes"]) == [("auth-changed", "/security")]
    assert data["breaking_changes"][0]["new"] == "api_key"
    assert data["breaking_changes"][0]["old"] == "no authentication"


def test_operation_security_added_and_relaxed(workspace: Path) -> None:
    old = copy.deepcopy(PETSTORE)
    _with_api_key(old)
    data = data_of(
        *compare(workspace, old, lambda d: d["paths"]["/pets"]["post"].update(security=[{"api_key": []}]))
    )
    assert kinds(data["breaking_changes"]) == [("auth-changed", "/paths/~1pets/post/security")]

    old["security"] = [{"api_key": []}]
    data = data_of(*compare(workspace, old, lambda d: d["paths"]["/pets"]["get"].update(security=[])))
    assert data["compatible"] is True
    assert kinds(data["non_breaking_changes"]) == [("auth-relaxed", "/paths/~1pets/get/security")]


def test_security_scheme_definition_changed(workspace: Path) -> None:
    old = copy.deepcopy(PETSTORE)
    _with_api_key(old)
    old["security"] = [{"api_key": []}]
    data = data_of(
        *compare(
            workspace, old, lambda d: d["components"]["securitySchemes"]["api_key"].update({"in": "query"})
        )
    )
    assert kinds(data["breaking_changes"]) == [("auth-changed", "/components/securitySchemes/api_key")]
    assert "in: header -> query" in data["breaking_changes"][0]["message"]


# -- fail_on_breaking, outputs, formats ------------------------------------------------------------


def test_fail_on_breaking_turns_breaking_changes_into_errors(workspace: Path) -> None:
    rc, doc = compare(workspace, PETSTORE, lambda d: d["paths"]["/pets"].pop("post"), "--fail_on_breaking")
    assert rc == 1 and doc["ok"] is False and doc["status"] == "failed"
    assert doc["errors"] == [
        {
            "code": "operation-removed",
            "message": "operation POST /pets was removed",
            "location": "/paths/~1pets/post",
        }
    ]
    assert doc["data"]["compatible"] is False
    structured = normalise(doc, rc)
    assert structured["ok"] is False and structured["breaking_changes"][0]["kind"] == "operation-removed"


def test_fail_on_breaking_without_breaking_changes_succeeds(workspace: Path) -> None:
    rc, doc = compare(
        workspace,
        PETSTORE,
        lambda d: d["paths"]["/pets"]["get"].update(summary="List pets"),
        "--fail_on_breaking",
    )
    data = data_of(rc, doc)
    assert data["compatible"] is True
    assert kinds(data["non_breaking_changes"]) == [("description-changed", "/paths/~1pets/get/summary")]


def test_normalised_result_has_every_declared_output(workspace: Path) -> None:
    manifest = load_skill_manifest(SKILL_DIR / "skill.yaml")
    assert manifest.name == "api.compatibility" and manifest.handler == HANDLER.name
    rc, doc = compare(workspace, PETSTORE, lambda d: d["paths"].pop("/pets"))
    structured = normalise(doc, rc)
    python_types = {"boolean": bool, "array": list, "object": dict, "string": str}
    for output in manifest.typed_outputs:
        assert output.name in structured, output.name
        assert isinstance(structured[output.name], python_types[TYPE_ALIASES[output.type]]), output.name
    assert structured["ok"] is True and structured["compatible"] is False


def test_json_document_against_yaml(workspace: Path) -> None:
    new = copy.deepcopy(PETSTORE)
    new["info"]["version"] = "1.1.0"
    new["paths"]["/pets"]["get"]["responses"].pop("default")
    old_name, new_name = write(workspace, "old.yaml", PETSTORE), write(workspace, "new.json", new)
    data = data_of(*run_skill(workspace, old_name, new_name))
    assert (data["old_version"], data["new_version"]) == ("1.0.0", "1.1.0")
    assert kinds(data["breaking_changes"]) == [
        ("response-code-removed", "/paths/~1pets/get/responses/default")
    ]


def test_swagger_2_documents(workspace: Path) -> None:
    old = {
        "swagger": "2.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/items": {
                "post": {
                    "parameters": [
                        {"name": "limit", "in": "query", "type": "integer"},
                        {
                            "name": "body",
                            "in": "body",
                            "required": True,
                            "schema": {"$ref": "#/definitions/Item"},
                        },
                    ],
                    "responses": {"200": {"description": "ok", "schema": {"$ref": "#/definitions/Item"}}},
                }
            }
        },
        "definitions": {
            "Item": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}}
        },
    }

    def mutate(d: dict[str, Any]) -> None:
        d["paths"]["/items"]["post"]["parameters"][0]["type"] = "string"
        d["definitions"]["Item"]["properties"].pop("name")

    data = data_of(*compare(workspace, old, mutate))
    assert kinds(data["breaking_changes"]) == [
        ("type-changed", "/paths/~1items/post/parameters/0"),
        ("response-property-removed", "/paths/~1items/post/responses/200/schema/properties/name"),
    ]
    assert ("request-property-removed", "/paths/~1items/post/parameters/1/schema/properties/name") in kinds(
        data["non_breaking_changes"]
    )


# -- bad inputs ------------------------------------------------------------------------------------


def _failure(rc: int, doc: dict[str, Any]) -> dict[str, Any]:
    assert rc == 1 and doc["ok"] is False, doc
    assert len(doc["errors"]) >= 1
    return doc["errors"][0]


def test_missing_file(workspace: Path) -> None:
    shutil.copy(OPENAPI_DIR / "petstore.yaml", workspace / "old.yaml")
    error = _failure(*run_skill(workspace, "old.yaml", "nope.yaml"))
    assert error["code"] == "not_found"
    assert "new_spec_path 'nope.yaml' does not exist" in error["message"]


def test_bad_yaml_names_the_line(workspace: Path) -> None:
    shutil.copy(OPENAPI_DIR / "petstore.yaml", workspace / "old.yaml")
    (workspace / "new.yaml").write_text("openapi: 3.0.0\ninfo:\n  title: x\n  version: [1\npaths: {}\n")
    error = _failure(*run_skill(workspace, "old.yaml", "new.yaml"))
    assert error["code"] == "parse_error"
    assert error["message"].startswith("new.yaml: invalid YAML at line 5")


def test_path_outside_workspace(workspace: Path) -> None:
    shutil.copy(OPENAPI_DIR / "petstore.yaml", workspace / "new.yaml")
    error = _failure(*run_skill(workspace, str(OPENAPI_DIR / "petstore.yaml"), "new.yaml"))
    assert error["code"] == "path_outside_workspace"
    assert "outside the workspace" in error["message"] and "old_spec_path" in error["message"]


@pytest.mark.parametrize(
    ("content", "code", "text"),
    [
        ("- just\n- a list\n", "not_openapi", "its top level is a list"),
        (
            "name: my-service\nversion: 2\n",
            "not_openapi",
            "no 'openapi' (or 'swagger') field (top-level keys: name, version)",
        ),
        (
            "openapi: 2.5.0\ninfo: {title: t, version: '1'}\npaths: {}\n",
            "unsupported_version",
            "openapi: 2.5.0",
        ),
        (
            "openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths: [a]\n",
            "not_openapi",
            "'paths' must be a mapping",
        ),
    ],
)
def test_not_an_openapi_document(workspace: Path, content: str, code: str, text: str) -> None:
    shutil.copy(OPENAPI_DIR / "petstore.yaml", workspace / "old.yaml")
    (workspace / "new.yaml").write_text(content)
    error = _failure(*run_skill(workspace, "old.yaml", "new.yaml"))
    assert error["code"] == code
    assert error["message"].startswith("new spec 'new.yaml'") and text in error["message"]


def test_broken_ref_names_the_ref_and_where_it_is_used(workspace: Path) -> None:
    rc, doc = compare(
        workspace,
        PETSTORE,
        lambda d: d["components"]["schemas"]["Pets"]["items"].update({"$ref": "#/components/schemas/Pett"}),
    )
    error = _failure(rc, doc)
    assert len(doc["errors"]) == 1
    assert error["code"] == "broken_ref"
    assert (error["ref"], error["used_at"], error["spec"]) == (
        "#/components/schemas/Pett",
        "/components/schemas/Pets/items",
        "new",
    )
    assert error["message"] == (
        "new spec 'new.yaml': $ref '#/components/schemas/Pett' used at /components/schemas/Pets/items "
        "does not resolve: /components/schemas has no 'Pett' (did you mean 'Pet'?)"
    )


def test_reference_loop_and_external_ref(workspace: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["components"]["schemas"]["A"] = {"$ref": "#/components/schemas/B"}
        d["components"]["schemas"]["B"] = {"$ref": "#/components/schemas/A"}
        d["paths"]["/pets"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
            "$ref": "other.yaml#/Pets"
        }

    rc, doc = compare(workspace, PETSTORE, mutate)
    assert rc == 1
    codes = {e["code"]: e for e in doc["errors"]}
    assert set(codes) == {"unsupported_ref", "ref_cycle"}
    assert codes["unsupported_ref"]["used_at"] == f"/paths/~1pets/get/responses/200/{JSON_SCHEMA}"
    assert (
        "#/components/schemas/A -> #/components/schemas/B -> #/components/schemas/A"
        in codes["ref_cycle"]["message"]
    )


def test_missing_argument_is_a_failure_envelope(workspace: Path) -> None:
    error = _failure(*run_skill(workspace, "old.yaml"))
    assert error["code"] == "bad_arguments" and "new_spec_path" in error["message"]


# -- over MCP --------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ERAS)
async def test_compatibility_over_mcp(workspace: Path, mode: str) -> None:
    shutil.copy(OPENAPI_DIR / "petstore.yaml", workspace / "old.yaml")
    new = copy.deepcopy(PETSTORE)
    new["paths"]["/pets"].pop("post")
    write(workspace, "new.yaml", new)
    async with stdio_client(workspace, fixtures=False, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "api_compatibility" in tools
        assert set(tools["api_compatibility"].output_schema["properties"]) >= {
            "compatible",
            "breaking_changes",
            "non_breaking_changes",
            "summary",
            "old_version",
            "new_version",
        }
        arguments = {"old_spec_path": "old.yaml", "new_spec_path": "new.yaml"}
        report = await client.call_tool("api_compatibility", arguments)
        failed = await client.call_tool("api_compatibility", {**arguments, "fail_on_breaking": True})
    assert not report.is_error
    assert report.structured_content["compatible"] is False
    assert kinds(report.structured_content["breaking_changes"]) == [
        ("operation-removed", "/paths/~1pets/post")
    ]
    assert failed.is_error
    assert failed.structured_content["errors"][0]["location"] == "/paths/~1pets/post"
