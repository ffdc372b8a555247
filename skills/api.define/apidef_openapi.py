"""The OpenAPI 3.1 document api.define writes for a ``Service``.

Per resource: a kebab-case plural collection path and an item path, one operation per requested
operation (operationId, summary, tag), the resource schema with its create/update payloads and a
paginated list wrapper. Shared: RFC 7807 problem responses (``application/problem+json``),
paging parameters, bearer security, servers. The result passes api.validate's ``all`` rule set.
"""

from __future__ import annotations

from typing import Any

from apidef_model import Resource, Service

PROBLEM_MEDIA = "application/problem+json"
PROBLEMS = {  # component name -> (status, description)
    "BadRequest": ("400", "The request is malformed or fails validation."),
    "Unauthorized": ("401", "The bearer token is missing or invalid."),
    "NotFound": ("404", "No resource has this id."),
    "InternalServerError": ("500", "The server failed to handle the request."),
}
ERRORS = {  # operation -> the problem responses it documents
    "list": ("BadRequest", "Unauthorized", "InternalServerError"),
    "get": ("Unauthorized", "NotFound", "InternalServerError"),
    "create": ("BadRequest", "Unauthorized", "InternalServerError"),
    "update": ("BadRequest", "Unauthorized", "NotFound", "InternalServerError"),
    "delete": ("Unauthorized", "NotFound", "InternalServerError"),
}
METHODS = {"list": "get", "get": "get", "create": "post", "update": "patch", "delete": "delete"}


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def indefinite(label: str) -> str:
    """``order`` -> ``an order``; ``category`` -> ``a category``."""
    return ("an " if label[:1] in "aeiou" else "a ") + label


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def build(service: Service) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Problem": problem_schema(), "Pagination": pagination_schema(service)}
    for resource in service.resources:
        paths.update(resource_paths(service, resource))
        schemas.update(resource_schemas(service, resource))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{service.title} API",
            "version": service.version,
            "description": service.description,
            "contact": {"name": f"{service.title} team"},
            "license": {"name": "Proprietary"},
        },
        "servers": [{"url": service.server_url, "description": "Production"}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": r.tag, "description": f"Operations on {r.plural_label}."} for r in service.resources
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "parameters": paging_parameters(service),
            "responses": {
                name: {"description": text, "content": {PROBLEM_MEDIA: {"schema": ref("schemas", "Problem")}}}
                for name, (_status, text) in PROBLEMS.items()
            },
            "schemas": schemas,
        },
    }


def resource_paths(service: Service, r: Resource) -> dict[str, Any]:
    collection: dict[str, Any] = {}
    item: dict[str, Any] = {}
    for operation in r.operations:
        target = collection if operation in ("list", "create") else item
        target[METHODS[operation]] = build_operation(service, r, operation)
    paths: dict[str, Any] = {}
    if collection:
        paths[r.collection_path] = collection
    if item:
        id_param = {
            "name": r.id_param,
            "in": "path",
            "required": True,
            "description": f"The id of the {r.label}.",
            "schema": {"type": "string", "format": "uuid"},
        }
        paths[r.item_path] = {"parameters": [id_param], **item}
    return paths


def build_operation(service: Service, r: Resource, operation: str) -> dict[str, Any]:
    summaries = {
        "list": f"List {r.plural_label}",
        "get": f"Get one {r.label}",
        "create": f"Create {indefinite(r.label)}",
        "update": f"Update {indefinite(r.label)}",
        "delete": f"Delete {indefinite(r.label)}",
    }
    op: dict[str, Any] = {
        "operationId": r.operation_id(operation),
        "summary": summaries[operation],
        "tags": [r.tag],
    }
    one = json_body(ref("schemas", r.schema))
    if operation == "list":
        op["parameters"] = [ref("parameters", name) for name in paging_parameters(service)]
        responses: dict[str, Any] = {
            "200": {
                "description": f"A page of {r.plural_label}.",
                "content": json_body(ref("schemas", r.schema + "List")),
            }
        }
    elif operation == "create":
        op["requestBody"] = {"required": True, "content": json_body(ref("schemas", r.schema + "Create"))}
        responses = {
            "201": {
                "description": f"The {r.label} was created.",
                "headers": {
                    "Location": {
                        "description": f"The URL of the new {r.label}.",
                        "schema": {"type": "string", "format": "uri-reference"},
                    }
                },
                "content": one,
            }
        }
    elif operation == "update":
        op["requestBody"] = {"required": True, "content": json_body(ref("schemas", r.schema + "Update"))}
        responses = {"200": {"description": f"The updated {r.label}.", "content": one}}
    elif operation == "delete":
        responses = {"204": {"description": f"The {r.label} was deleted."}}
    else:
        responses = {"200": {"description": f"The {r.label}.", "content": one}}
    for name in ERRORS[operation]:
        responses[PROBLEMS[name][0]] = ref("responses", name)
    op["responses"] = responses
    return op


def resource_schemas(service: Service, r: Resource) -> dict[str, Any]:
    properties = {f.name: f.schema for f in r.fields}
    required = [f.name for f in r.fields if f.required]
    created, updated = service.prop(["created", "at"]), service.prop(["updated", "at"])
    timestamp = {"type": "string", "format": "date-time", "readOnly": True}
    create: dict[str, Any] = {
        "type": "object",
        "description": f"The fields to create {indefinite(r.label)}.",
        "properties": properties,
    }
    if required:
        create["required"] = required
    return {
        r.schema: {
            "type": "object",
            "description": f"{indefinite(r.label).capitalize()}.",
            "required": ["id", *required, created, updated],
            "properties": {
                "id": {"type": "string", "format": "uuid", "readOnly": True},
                **properties,
                created: timestamp,
                updated: timestamp,
            },
        },
        r.schema + "Create": create,
        r.schema + "Update": {
            "type": "object",
            "minProperties": 1,
            "properties": properties,
            "description": f"The fields to change on {indefinite(r.label)}.",
        },
        r.schema + "List": {
            "type": "object",
            "description": f"A page of {r.plural_label}.",
            "required": ["items", "pagination"],
            "properties": {
                "items": {"type": "array", "items": ref("schemas", r.schema)},
                "pagination": ref("schemas", "Pagination"),
            },
        },
    }


def paging_parameters(service: Service) -> dict[str, Any]:
    limit = {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "How many items to return.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    }
    if service.pagination == "cursor":
        second = {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": "Where the page starts: the next cursor of the previous page.",
            "schema": {"type": "string"},
        }
        return {"Limit": limit, "Cursor": second}
    second = {
        "name": "offset",
        "in": "query",
        "required": False,
        "description": "How many items to skip.",
        "schema": {"type": "integer", "minimum": 0, "default": 0},
    }
    return {"Limit": limit, "Offset": second}


def pagination_schema(service: Service) -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    if service.pagination == "cursor":
        next_cursor = service.prop(["next", "cursor"])
        return {
            "type": "object",
            "description": "Where this page sits; follow the next cursor for more.",
            "required": ["limit", next_cursor],
            "properties": {"limit": count, next_cursor: {"type": ["string", "null"]}},
        }
    return {
        "type": "object",
        "description": "Where this page sits in the collection.",
        "required": ["limit", "offset", "total"],
        "properties": {"limit": count, "offset": count, "total": count},
    }


def problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "An RFC 7807 problem detail.",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference", "default": "about:blank"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 100, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string", "format": "uri-reference"},
        },
    }


def counts(doc: dict[str, Any]) -> tuple[int, int]:
    """(paths, operations) of a generated document."""
    operations = sum(1 for item in doc["paths"].values() for key in item if key in METHODS.values())
    return len(doc["paths"]), operations
