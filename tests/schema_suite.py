"""JSON Schemas that constrained decoding must keep to, each with a request a model might get:
nested objects, arrays with bounds, enums, numbers with ranges, optional fields, anyOf. Strings,
arrays and decimals (multipleOf) are bounded so that every output fits a small token budget,
whatever the model prefers."""

NAME = {"type": "string", "minLength": 1, "maxLength": 12}


def obj(properties: dict, required: list[str] | None = None) -> dict:
    """An object with exactly these properties (the required ones: all, unless said)."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, "additionalProperties": False}


SCHEMAS: list[tuple[str, dict]] = [
    ("A person as JSON.", obj({"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    ("Is the sky blue?", obj({"answer": {"type": "boolean"}})),
    ("Pick a colour.", obj({"colour": {"enum": ["red", "green", "blue"]}})),
    ("Rate this film from 1 to 5.", obj({"stars": {"type": "integer", "minimum": 1, "maximum": 5}})),
    ("A temperature in Celsius.", obj({"celsius": {"type": "number", "minimum": -50, "maximum": 60,
                                                              "multipleOf": 0.1}})),
    ("Three fruits.", obj({"fruits": {"type": "array", "items": NAME, "minItems": 3, "maxItems": 3}})),
    ("Up to two tags for a cat photo.", obj({"tags": {"type": "array", "items": NAME, "maxItems": 2}})),
    ("A point on a plane.", obj({"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                 "y": {"type": "integer", "minimum": -9, "maximum": 9}})),
    ("A book with its author.", obj({"title": NAME, "author": obj({"first": NAME, "last": NAME})})),
    ("A city and its country.", obj({"city": NAME, "country": NAME})),
    ("The weather today.", obj({"sky": {"enum": ["sunny", "cloudy", "rainy"]},
                                "wind": {"type": "integer", "minimum": 0, "maximum": 150}})),
    ("A user, with an email if you know one.", obj({"user": NAME, "email": NAME}, required=["user"])),
    ("An id: a number or a short code.", obj({"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999},
                                                               NAME]}})),
    ("Either a cat or a dog.", {"anyOf": [obj({"cat": NAME}), obj({"dog": NAME})]}),
    ("A shopping list of one to three items with quantities.",
     obj({"items": {"type": "array", "minItems": 1, "maxItems": 3,
                    "items": obj({"name": NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 9}})}})),
    ("A grade.", {"enum": ["A", "B", "C", "D", "F"]}),
    ("A yes or no answer.", {"type": "boolean"}),
    ("A percentage.", {"type": "integer", "minimum": 0, "maximum": 100}),
    ("A short word.", NAME),
    ("Two numbers.", {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                      "minItems": 2, "maxItems": 2}),
    ("A date.", obj({"year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                     "month": {"type": "integer", "minimum": 1, "maximum": 12},
                     "day": {"type": "integer", "minimum": 1, "maximum": 31}})),
    ("A status report.", obj({"ok": {"type": "boolean"}, "code": {"enum": [200, 404, 500]}})),
    ("A nested config.", obj({"server": obj({"port": {"type": "integer", "minimum": 1, "maximum": 9999},
                                             "tls": {"type": "boolean"}})})),
    ("A price.", obj({"amount": {"type": "number", "minimum": 0, "maximum": 1000, "multipleOf": 0.01},
                      "currency": {"enum": ["EUR", "USD", "GBP"]}})),
    ("A matrix of 2 by 2 digits.", {"type": "array", "minItems": 2, "maxItems": 2,
                                    "items": {"type": "array", "minItems": 2, "maxItems": 2,
                                              "items": {"type": "integer", "minimum": 0, "maximum": 9}}}),
    ("A nullable nickname.", obj({"nickname": {"anyOf": [NAME, {"type": "null"}]}})),
    ("A language and whether it is compiled.", obj({"language": NAME, "compiled": {"type": "boolean"}},
                                                   required=["language"])),
    ("A to-do item.", obj({"task": NAME, "done": {"type": "boolean"},
                           "priority": {"enum": ["low", "high"]}}, required=["task", "done"])),
    ("A sum and its terms.", obj({"terms": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                                            "minItems": 1, "maxItems": 3},
                                  "sum": {"type": "integer", "minimum": 0, "maximum": 27}})),
    ("An animal and its legs.", obj({"animal": NAME, "legs": {"type": "integer", "enum": [0, 2, 4, 6, 8]}})),
    ("A constant.", obj({"kind": {"const": "greeting"}, "text": NAME})),
    ("A reference to a person.", {"$defs": {"person": obj({"name": NAME})},
                                  "type": "object", "properties": {"owner": {"$ref": "#/$defs/person"}},
                                  "required": ["owner"], "additionalProperties": False}),
]

# the schema-heavy output of the speed target: an object with 8 fixed keys and short values
EIGHT_KEYS = obj({key: {"type": "integer", "minimum": 0, "maximum": 9}
                  for key in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")})
