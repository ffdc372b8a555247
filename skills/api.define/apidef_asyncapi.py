"""The AsyncAPI 3.0 document api.define writes when asked: one event per resource change.

A resource's ``create``/``update``/``delete`` operations each become an event (``order.created``...):
a channel with its address and message, a ``send`` operation on it, the message in components with
an envelope payload (event id, time, the resource - or its id for a deletion).
"""

from __future__ import annotations

from typing import Any

from apidef_model import Resource, Service, camel, pascal
from apidef_openapi import indefinite, resource_schemas

EVENTS = {"create": "created", "update": "updated", "delete": "deleted"}


def build(service: Service) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for r in service.resources:
        events = [EVENTS[op] for op in r.operations if op in EVENTS]
        if events:
            schemas[r.schema] = resource_schemas(service, r)[r.schema]
        for event in events:
            channel, message = camel([*r.words, event]), pascal([*r.words, event])
            channels[channel] = {
                "address": f"{service.slug}.{'-'.join(r.words)}.{event}",
                "description": f"Every {r.label} that was {event}.",
                "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            }
            operations[camel(["send", *r.words, event])] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel}"},
                "summary": f"Publish an event when {indefinite(r.label)} is {event}.",
                "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
            }
            messages[message] = {
                "name": message,
                "title": f"{r.label.capitalize()} {event}",
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{message}Event"},
            }
            schemas[f"{message}Event"] = event_schema(service, r, event)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"{service.title} events",
            "version": service.version,
            "description": f"Events published by {service.title} when its resources change.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "production": {
                "host": "broker.example.com",
                "protocol": "kafka",
                "description": "The message broker (replace with yours).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def event_schema(service: Service, r: Resource, event: str) -> dict[str, Any]:
    event_id, occurred = service.prop(["event", "id"]), service.prop(["occurred", "at"])
    data: dict[str, Any] = (
        {"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "format": "uuid"}}}
        if event == "deleted"
        else {"$ref": f"#/components/schemas/{r.schema}"}
    )
    return {
        "type": "object",
        "description": f"The envelope of {indefinite(r.label)} {event} event.",
        "required": [event_id, occurred, "data"],
        "properties": {
            event_id: {"type": "string", "format": "uuid"},
            occurred: {"type": "string", "format": "date-time"},
            "data": data,
        },
    }
