"""JSON integers as JSON Schema reads them, for request and event models.

JSON Schema calls 3.0 an integer and `true` or "3" not a number. Pydantic's strict int
refuses 3.0, and its lax int takes `true` and "3"; `Integer` takes what the schema's
"integer" takes and nothing else. Numbers use pydantic's `StrictFloat`, which already takes
ints and refuses booleans and strings.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def json_integer(value: Any) -> Any:
    """`value` as an int when it is a whole JSON number; a ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


# Last in an Annotated, after the bounds (`Annotated[int, Field(ge=1), JSON_INTEGER]`): bounds
# placed after a validator reach the schema as raw "ge"/"le" keys, not minimum/maximum.
JSON_INTEGER = BeforeValidator(json_integer)
Integer = Annotated[int, JSON_INTEGER]
