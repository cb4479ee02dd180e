"""Structured outputs on the chat wire: ``response_format`` (``text``, ``json_object`` or
``json_schema`` with its schema) and the ``Guide`` it constrains the answer with."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelyard.serving._types import Guide
from modelyard.serving._wire_fields import JsonObject, Text

_SCHEMA_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the answer must be valid under."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Text = Field(pattern=_SCHEMA_NAME)
    description: Text | None = None
    schema_: JsonObject = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # always strict here: constrained decoding follows the schema


class ResponseFormat(BaseModel):
    """``response_format``: ``text`` (the default), ``json_object`` or ``json_schema``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError(
                "send json_schema with type json_schema (and only then): "
                '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}'
            )
        return self

    def guide(self) -> Guide | None:
        if self.type == "json_object":
            return Guide("json_object", param="response_format")
        if self.json_schema is not None:
            schema = json.dumps(self.json_schema.schema_, separators=(",", ":"))
            return Guide("json_schema", schema, param="response_format.json_schema.schema")
        return None


__all__ = ["JsonSchemaFormat", "ResponseFormat"]
