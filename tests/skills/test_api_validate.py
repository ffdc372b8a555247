"""api.validate: structure and $ref checks, the guideline rules, options, envelopes and the MCP tool."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from betty_mcp.run.envelope import last_json_document, normalise
from tests.conftest import OPENAPI_DIR, ROOT, stdio_client

SKILL_DIR = ROOT / "skills" / "api.validate"
HANDLER = SKILL_DIR / "validate.py"
REAL_SPECS = sorted(p.name for p in OPENAPI_DIR.glob("*.yaml"))
STRUCTURAL = {"document-parse", "openapi-version", "ref-resolvable", "openapi-structure"}


def _load_handler() -> Any:
    sys.path.insert(0, str(SKILL_DIR))
    spec = importlib.util.spec_from_file_location("api_validate_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


validate = _load_handler()
import oas_rules  # noqa: E402 - the skill folder is on sys.path once the handler is loaded


@pytest.fixture
def ws(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BETTY_WORKSPACE", str(workspace))
    monkeypatch.delenv("BETTY_ALLOWED_ROOTS", raising=False)
    for name in REAL_SPECS:
        shutil.copy(OPENAPI_DIR / name, workspace / name)
    return workspace


def check(*argv: str) -> dict[str, Any]:
    """Call the handler in-process with Betty argv; the payload it returns (``ok`` popped)."""
    payload = validate.handle(validate.argparser.parse_args(list(argv)))
    payload.setdefault("ok", True)
    return payload


def findings(result: dict[str, Any]) -> list[dict[str, Any]]:
    return result["errors"] + result["warnings"] + result["notes"]


def located(result: dict[str, Any], rule_id: str) -> list[str]:
    return [f["path"] for f in findings(result) if f["rule_id"] == rule_id]


def run_script(workspace: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    """The handler as the server runs it; the normalised result the server would return."""
    proc = subprocess.run(
        [sys.executable, str(HANDLER), *argv],
        cwd=workspace,
        capture_output=True,
        text=True,
        env={"BETTY_WORKSPACE": str(workspace), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    return proc.returncode, normalise(last_json_document(proc.stdout), proc.returncode)


def write_yaml(path: Path, doc: Any) -> str:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path.name


def petstore() -> dict[str, Any]:
    return yaml.safe_load((OPENAPI_DIR / "petstore.yaml").read_text())


# -- the real documents --------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_SPECS)
def test_real_specs_are_structurally_valid(ws: Path, name: str) -> None:
    result = check(name)
    assert not [f for f in findings(result) if f["rule_id"] in STRUCTURAL]
    assert result["spec_version"].startswith("3.0.")


def test_petstore_findings(ws: Path) -> None:
    result = check("petstore.yaml")
    assert result["ok"] and result["valid"] and result["errors"] == []
    assert result["spec_version"] == "3.0.0"
    ops = ["/paths/~1pets/get", "/paths/~1pets/post", "/paths/~1pets~1{petId}/get"]
    assert located(result, "responses-4xx") == [f"{op}/responses" for op in ops]
    assert located(result, "responses-5xx") == [f"{op}/responses" for op in ops]
    assert located(result, "error-schema") == [f"{op}/responses/default" for op in ops]
    assert located(result, "security-defined") == ["/security"]
    assert located(result, "info-description") == ["/info/description"]
    assert len(result["warnings"]) == 11
    first = result["warnings"][1]
    assert first == {
        "rule_id": "responses-4xx",
        "severity": "warning",
        "path": "/paths/~1pets/get/responses",
        "message": "GET /pets documents no 4xx response (e.g. 400, 404)",
    }
    # GET /pets returns an array but takes `limit`: no pagination finding; names are camel case.
    assert located(result, "pagination-params") == [] and located(result, "property-case") == []
    assert result["rules_checked"] == [r.id for r in oas_rules.select("recommended")]


def test_callback_example_lacks_an_operation_id(ws: Path) -> None:
    result = check("callback-example.yaml")
    assert result["ok"] is False and result["valid"] is False
    assert result["errors"] == [
        {
            "rule_id": "operation-id-present",
            "severity": "error",
            "path": "/paths/~1streams/post",
            "message": "POST /streams has no operationId",
        }
    ]


def test_petstore_expanded_operation_id_with_spaces(ws: Path) -> None:
    result = check("petstore-expanded.yaml")
    [found] = [f for f in result["warnings"] if f["rule_id"] == "operation-id-format"]
    assert found["path"] == "/paths/~1pets~1{id}/get/operationId"
    assert "'find pet by id'" in found["message"] and "'findPetById'" in found["message"]
    assert located(result, "info-description") == []  # it has one


def test_link_example_pagination_and_summaries(ws: Path) -> None:
    result = check("link-example.yaml")
    assert located(result, "pagination-params") == [
        "/paths/~12.0~1repositories~1{username}/get",
        "/paths/~12.0~1repositories~1{username}~1{slug}~1pullrequests/get",
    ]
    assert len(located(result, "operation-summary")) == 6
    assert located(result, "paths-kebab-case") == []  # "2.0" is a version segment


def test_uspto_error_responses(ws: Path) -> None:
    result = check("uspto.yaml")
    assert result["spec_version"] == "3.0.1"
    by_path = {f["path"]: f["message"] for f in result["warnings"] if f["rule_id"] == "error-schema"}
    assert "is not an RFC 7807 problem" in by_path["/paths/~1{dataset}~1{version}~1fields/get/responses/404"]
    assert "has no body" in by_path["/paths/~1{dataset}~1{version}~1records/post/responses/404"]
    assert located(result, "responses-4xx") == ["/paths/~1/get/responses"]


def test_api_with_examples_lacks_client_errors(ws: Path) -> None:
    result = check("api-with-examples.yaml")
    assert located(result, "responses-4xx") == ["/paths/~1/get/responses", "/paths/~1v2/get/responses"]
    assert located(result, "servers-defined") == ["/servers"]


# -- options ------------------------------------------------------------------------------


def test_strict_turns_warnings_into_errors(ws: Path) -> None:
    result = check("petstore.yaml", "--strict")
    assert result["ok"] is False and result["valid"] is False
    assert result["warnings"] == [] and len(result["errors"]) == 11
    assert {f["severity"] for f in result["errors"]} == {"error"}


def test_rule_sets(ws: Path) -> None:
    minimal = check("petstore.yaml", "--rule_set", "minimal")
    assert minimal["rules_checked"] == [
        "info-version",
        "operation-id-present",
        "operation-id-unique",
        "responses-success",
        "security-schemes-exist",
    ]
    assert minimal["warnings"] == [] and minimal["valid"]
    everything = check("petstore.yaml", "--rule_set", "all")
    assert set(everything["rules_checked"]) == set(oas_rules.RULES)
    assert [(f["rule_id"], f["severity"]) for f in everything["notes"]] == [("info-contact", "info")]
    assert everything["valid"]  # notes never affect validity


def test_disabled_rules(ws: Path) -> None:
    result = check("petstore.yaml", "--disabled_rules", '["responses-4xx", "error-schema"]')
    assert "responses-4xx" not in result["rules_checked"] and "error-schema" not in result["rules_checked"]
    assert located(result, "responses-4xx") == [] and located(result, "error-schema") == []
    assert len(located(result, "responses-5xx")) == 3


def test_unknown_disabled_rule_is_refused(ws: Path) -> None:
    with pytest.raises(validate.SkillError) as exc:
        check("petstore.yaml", "--disabled_rules", '["responses-4xx", "no-such-rule"]')
    assert exc.value.code == "unknown_rule"
    assert "'no-such-rule'" in exc.value.message and "paths-kebab-case" in exc.value.message


def test_property_case_option(ws: Path) -> None:
    doc = petstore()
    doc["components"]["schemas"]["Pet"]["properties"]["pet_tag"] = {"type": "string"}
    name = write_yaml(ws / "snake.yaml", doc)
    camel = check(name)
    assert located(camel, "property-case") == ["/components/schemas/Pet/properties/pet_tag"]
    snake = check(name, "--property_case", "snake")
    assert located(snake, "property-case") == []
    pascal = check(name, "--property_case", "pascal")
    assert len(located(pascal, "property-case")) == 6  # id, name, tag, pet_tag, code, message


# -- structure and references --------------------------------------------------------------


def test_broken_local_ref(ws: Path) -> None:
    doc = petstore()
    doc["paths"]["/pets"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] = (
        "#/components/schemas/Nope"
    )
    result = check(write_yaml(ws / "broken.yaml", doc))
    assert result["valid"] is False
    [error] = [f for f in result["errors"] if f["rule_id"] == "ref-resolvable"]
    assert error["path"] == "/paths/~1pets/get/responses/200/content/application~1json/schema/$ref"
    assert (
        error["message"]
        == "$ref '#/components/schemas/Nope' does not resolve: no 'Nope' in /components/schemas"
    )


def test_relative_file_refs(ws: Path) -> None:
    (ws / "common").mkdir()
    write_yaml(ws / "common" / "schemas.yaml", {"Pet": petstore()["components"]["schemas"]["Pet"]})
    doc = petstore()
    doc["paths"]["/pets/{petId}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
        "$ref": "common/schemas.yaml#/Pet"
    }
    assert check(write_yaml(ws / "split.yaml", doc))["valid"]

    doc["paths"]["/pets/{petId}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
        "$ref": "common/schemas.yaml#/Dog"
    }
    [error] = check(write_yaml(ws / "split.yaml", doc))["errors"]
    assert error["rule_id"] == "ref-resolvable"
    assert (
        error["message"] == "$ref 'common/schemas.yaml#/Dog' does not resolve in schemas.yaml: "
        "no 'Dog' in / (the document root)"
    )

    doc["paths"]["/pets/{petId}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
        "$ref": "../outside.yaml#/Pet"
    }
    [error] = check(write_yaml(ws / "split.yaml", doc))["errors"]
    assert "outside the workspace" in error["message"]


def test_anchor_refs_in_3_1_are_not_misread_as_pointers(ws: Path) -> None:
    doc = petstore()
    doc["openapi"] = "3.1.0"
    doc["components"]["schemas"]["Pet"]["$anchor"] = "pet"
    doc["components"]["schemas"]["Pets"]["items"] = {"$ref": "#pet"}
    result = check(write_yaml(ws / "anchor.yaml", doc))
    assert result["valid"] and [f["rule_id"] for f in result["errors"]] == []
    [note] = [f for f in result["notes"] if f["rule_id"] == "ref-resolvable"]
    assert note["path"] == "/components/schemas/Pets/items/$ref" and "$anchor" in note["message"]
    doc["components"]["schemas"]["Pets"]["items"] = {"$ref": "#dog"}
    [error] = check(write_yaml(ws / "anchor.yaml", doc))["errors"]
    assert error["message"] == "$ref '#dog' does not resolve: no $anchor 'dog' in the document"


def test_remote_ref_is_a_warning(ws: Path) -> None:
    doc = petstore()
    doc["components"]["schemas"]["Pets"]["items"] = {"$ref": "https://example.com/pet.yaml#/Pet"}
    result = check(write_yaml(ws / "remote.yaml", doc))
    assert result["valid"]
    [found] = [f for f in result["warnings"] if f["rule_id"] == "ref-resolvable"]
    assert found["path"] == "/components/schemas/Pets/items/$ref" and "not fetched" in found["message"]


def test_bad_yaml_names_line_and_column(ws: Path) -> None:
    text = (
        (OPENAPI_DIR / "petstore.yaml")
        .read_text()
        .replace("  title: Swagger Petstore", "  title: [Swagger Petstore")
    )
    (ws / "bad.yaml").write_text(text)
    result = check("bad.yaml")
    assert result["valid"] is False and result["spec_version"] == "unknown"
    [error] = result["errors"]
    assert error["rule_id"] == "document-parse"
    assert error["message"].startswith("bad.yaml: invalid YAML at line 5, column 10")


def test_missing_info(ws: Path) -> None:
    doc = petstore()
    del doc["info"]
    result = check(write_yaml(ws / "noinfo.yaml", doc))
    assert result["valid"] is False
    assert {
        "rule_id": "openapi-structure",
        "severity": "error",
        "path": "/info",
        "message": "'info' is a required property",
    } in result["errors"]
    assert located(result, "info-version") == ["/info/version"]


def test_wrong_type_deep_in_the_document(ws: Path) -> None:
    doc = petstore()
    doc["paths"]["/pets"]["get"]["responses"]["200"]["description"] = 5
    [error] = check(write_yaml(ws / "wrong.yaml", doc))["errors"]
    assert error["path"] == "/paths/~1pets/get/responses/200/description"
    assert error["message"] == "5 is not of type 'string'"


def test_duplicate_operation_id(ws: Path) -> None:
    doc = petstore()
    doc["paths"]["/pets"]["post"]["operationId"] = "listPets"
    result = check(write_yaml(ws / "dup.yaml", doc))
    assert located(result, "openapi-structure") == ["/paths/~1pets/post"]
    [dup] = [f for f in result["errors"] if f["rule_id"] == "operation-id-unique"]
    assert dup["message"] == "operationId 'listPets' of POST /pets is also used by GET /pets"


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        (3.0, "/openapi", "quote it"),
        ("4.0.0", "/openapi", "unsupported OpenAPI version '4.0.0'"),
    ],
)
def test_bad_openapi_version(ws: Path, value: Any, path: str, words: str) -> None:
    doc = petstore()
    doc["openapi"] = value
    result = check(write_yaml(ws / "version.yaml", doc))
    [error] = result["errors"]
    assert error["rule_id"] == "openapi-version" and error["path"] == path and words in error["message"]
    assert result["warnings"] == []  # guideline rules do not run on a document of unknown version


def test_not_an_openapi_document(ws: Path) -> None:
    (ws / "list.yaml").write_text("- a\n- b\n")
    [error] = check("list.yaml")["errors"]
    assert error["rule_id"] == "openapi-version" and "a list, not a mapping" in error["message"]


def test_swagger_2_json(ws: Path) -> None:
    doc = {
        "swagger": "2.0",
        "info": {"title": "Users", "version": "1.0", "description": "Users."},
        "host": "api.example.com",
        "paths": {
            "/user_accounts/{id}": {
                "get": {
                    "operationId": "getUser",
                    "summary": "One user",
                    "parameters": [{"name": "id", "in": "path", "required": True, "type": "string"}],
                    "responses": {
                        "200": {"description": "ok", "schema": {"$ref": "#/definitions/User"}},
                        "404": {"description": "not found", "schema": {"$ref": "#/definitions/Problem"}},
                        "500": {"description": "failed", "schema": {"$ref": "#/definitions/Problem"}},
                    },
                    "security": [{"apiKey": []}],
                }
            }
        },
        "securityDefinitions": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-Key"}},
        "definitions": {
            "User": {"type": "object", "properties": {"user_name": {"type": "string"}}},
            "Problem": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "status": {"type": "integer"}},
            },
        },
    }
    (ws / "users.json").write_text(json.dumps(doc))
    result = check("users.json")
    assert result["valid"] and result["spec_version"] == "2.0" and result["errors"] == []
    assert [(f["rule_id"], f["path"]) for f in result["warnings"]] == [
        ("paths-kebab-case", "/paths/~1user_accounts~1{id}"),
        ("property-case", "/definitions/User/properties/user_name"),
    ]
    assert "(use 'user-accounts')" in result["warnings"][0]["message"]
    doc["info"]["version"] = 1  # Swagger 2 wants a string
    (ws / "users.json").write_text(json.dumps(doc))
    assert check("users.json")["errors"][0] == {
        "rule_id": "openapi-structure",
        "severity": "error",
        "path": "/info/version",
        "message": "1 is not of type 'string'",
    }


def test_openapi_3_1(ws: Path) -> None:
    doc = petstore()
    doc["openapi"] = "3.1.0"
    doc["components"]["schemas"]["Pet"]["properties"]["tag"]["type"] = ["string", "null"]
    hook = {"operationId": "newPetHook", "responses": {"200": {"description": "ok"}}}
    doc["webhooks"] = {"newPet": {"post": hook}}
    result = check(write_yaml(ws / "v31.yaml", doc))
    assert result["valid"] and result["spec_version"] == "3.1.0"
    assert not [f for f in findings(result) if f["rule_id"] in STRUCTURAL]
    doc["components"]["schemas"]["Pet"]["properties"]["id"]["type"] = "integr"
    result = check(write_yaml(ws / "v31.yaml", doc))
    assert result["valid"] is False
    assert [f["rule_id"] for f in result["errors"]] == ["openapi-structure"]


def test_json_input_matches_yaml(ws: Path) -> None:
    (ws / "petstore.json").write_text(json.dumps(petstore()))
    from_json, from_yaml = check("petstore.json"), check("petstore.yaml")
    assert findings(from_json) == findings(from_yaml)
    (ws / "broken.json").write_text('{"openapi": "3.0.0",\n  "info": }')
    [error] = check("broken.json")["errors"]
    assert error["message"].startswith("broken.json: invalid JSON at line 2, column 11")


def test_integer_status_codes_are_read_as_text(ws: Path) -> None:
    text = (OPENAPI_DIR / "petstore.yaml").read_text().replace("'200':", "200:").replace("'201':", "201:")
    (ws / "ints.yaml").write_text(text)
    assert findings(check("ints.yaml")) == findings(check("petstore.yaml"))


def test_malformed_document_still_gives_a_result(ws: Path) -> None:
    doc = petstore()
    doc["paths"]["/pets"]["get"]["responses"] = "none"
    doc["paths"]["/pets/{petId}"] = ["not", "a", "path item"]
    doc["components"]["schemas"] = []
    result = check(write_yaml(ws / "mangled.yaml", doc))
    assert result["valid"] is False
    assert {f["rule_id"] for f in result["errors"]} == {"openapi-structure", "ref-resolvable"}
    assert not [f for f in findings(result) if "could not run" in f["message"]]


# -- the rules, one by one -----------------------------------------------------------------


def bad_document() -> dict[str, Any]:
    """A document that breaks every guideline rule at least once."""
    error = {"description": "failed", "content": {"application/json": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Bad", "version": ""},
        "paths": {
            "/getUser_Item/{id}": {
                "get": {
                    "operationId": "get user",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"400": error},
                    "security": [{"undeclared": []}],
                }
            },
            "/items": {
                "get": {
                    "operationId": "get user",
                    "summary": "List",
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {"Item_Name": {"type": "string"}},
                                        },
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/health": {"get": {"summary": "Health", "responses": {"200": {"description": "ok"}}}},
        },
    }


def test_every_rule_fires_on_a_bad_document(ws: Path) -> None:
    result = check(write_yaml(ws / "bad.yaml", bad_document()), "--rule_set", "all")
    fired = {f["rule_id"] for f in findings(result)}
    assert set(oas_rules.RULES) <= fired
    assert located(result, "paths-no-verbs") == ["/paths/~1getUser_Item~1{id}"]
    assert located(result, "paths-plural-collections") == ["/paths/~1getUser_Item~1{id}"]
    assert located(result, "security-schemes-exist") == ["/paths/~1getUser_Item~1{id}/get/security/0"]
    assert located(result, "security-defined") == ["/paths/~1items/get", "/paths/~1health/get"]
    assert located(result, "responses-success") == ["/paths/~1getUser_Item~1{id}/get/responses"]
    assert located(result, "property-case") == [
        "/paths/~1items/get/responses/200/content/application~1json/schema/items/properties/Item_Name"
    ]


def test_a_clean_document_has_no_findings(ws: Path) -> None:
    problem = {
        "description": "problem",
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }
    doc = {
        "openapi": "3.0.3",
        "info": {
            "title": "Clean",
            "version": "1.0.0",
            "description": "Clean.",
            "contact": {"name": "Team"},
            "license": {"name": "MIT"},
        },
        "servers": [{"url": "https://api.example.com"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/line-items": {
                "get": {
                    "operationId": "listLineItems",
                    "summary": "List line items",
                    "tags": ["line-items"],
                    "parameters": [{"name": "page_size", "in": "query", "schema": {"type": "integer"}}],
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {"unitPrice": {"type": "number"}},
                                        },
                                    }
                                }
                            },
                        },
                        "400": problem,
                        "500": problem,
                    },
                }
            }
        },
    }
    result = check(write_yaml(ws / "clean.yaml", doc), "--rule_set", "all", "--strict")
    assert result["valid"] and findings(result) == []


@pytest.mark.parametrize(
    ("word", "plural"),
    [
        ("orders", True),
        ("order", False),
        ("categories", True),
        ("people", True),
        ("status", False),
        ("addresses", True),
        ("address", False),
        ("line-items", True),
        ("data", True),
        ("analysis", False),
    ],
)
def test_looks_plural(word: str, plural: bool) -> None:
    assert oas_rules.looks_plural(word) is plural


def test_rule_table() -> None:
    assert len(oas_rules.RULES) >= 12
    for rule_id, rule in oas_rules.RULES.items():
        assert rule.id == rule_id and rule.severity in oas_rules.SEVERITIES and rule.description
        assert rule.sets and set(rule.sets) <= set(oas_rules.RULE_SETS) and "all" in rule.sets
    documented = (SKILL_DIR / "SKILL.md").read_text()
    assert all(f"`{rule_id}`" in documented for rule_id in oas_rules.RULES)


# -- as the server runs it -----------------------------------------------------------------


def test_script_failure_envelope_keeps_every_field(ws: Path) -> None:
    code, result = run_script(ws, "callback-example.yaml", "--rule_set", "minimal")
    assert code == 1 and result["ok"] is False and result["status"] == "failed"
    assert result["valid"] is False and result["spec_version"] == "3.0.0"
    assert result["errors"][0]["rule_id"] == "operation-id-present"
    assert result["warnings"] == [] and len(result["rules_checked"]) == 5


def test_script_success_and_input_errors(ws: Path) -> None:
    code, result = run_script(ws, "petstore.yaml", "--disabled_rules", '["security-defined"]')
    assert code == 0 and result["ok"] and result["valid"] and len(result["warnings"]) == 10
    code, result = run_script(ws, "missing.yaml")
    assert code == 1 and result["errors"][0]["code"] == "not_found"
    code, result = run_script(ws, "../outside.yaml")
    assert code == 1 and result["errors"][0]["code"] == "path_outside_workspace"
    code, result = run_script(ws, "petstore.yaml", "--property_case", "upper")
    assert code == 1 and "invalid choice: 'upper'" in result["errors"][0]["message"]
    code, result = run_script(ws, "petstore.yaml", "--disabled_rules", "not json")
    assert code == 1 and result["errors"][0]["code"] == "bad_arguments"


@pytest.mark.anyio
async def test_validate_over_mcp(workspace: Path) -> None:
    shutil.copy(OPENAPI_DIR / "petstore.yaml", workspace / "petstore.yaml")
    shutil.copy(OPENAPI_DIR / "callback-example.yaml", workspace / "callback.yaml")
    async with stdio_client(workspace, fixtures=False) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["api_validate"].output_schema["properties"]["valid"]["type"] == "boolean"
        ok = await client.call_tool("api_validate", {"spec_path": "petstore.yaml", "rule_set": "all"})
        bad = await client.call_tool("api_validate", {"spec_path": "callback.yaml", "strict": True})
    assert not ok.is_error
    assert ok.structured_content["valid"] is True and len(ok.structured_content["warnings"]) == 11
    assert ok.structured_content["notes"][0]["rule_id"] == "info-contact"
    assert bad.is_error and bad.structured_content["valid"] is False
    assert {
        "rule_id": "operation-id-present",
        "severity": "error",
        "path": "/paths/~1streams/post",
        "message": "POST /streams has no operationId",
    } in bad.structured_content["errors"]
    assert all(f["severity"] == "error" for f in bad.structured_content["errors"])
