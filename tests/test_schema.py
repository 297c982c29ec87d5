"""manifests/dagrun.schema.json: a valid schema, in step with manifest.py, right about examples.

The schema is what taplo-based editors validate dagrun.toml files with (see
.taplo.toml).  It is written by hand, so these tests keep it from drifting
from the key tables in dagrun/manifest.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dagrun import manifest
from dagrun.errors import ManifestError
from dagrun.graph import compile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO / "manifests" / "dagrun.schema.json"
VALID = sorted(REPO.glob("examples/*/dagrun.toml")) + sorted((REPO / "manifests").glob("*.toml"))
BROKEN = sorted((REPO / "manifests" / "broken").glob("*.toml"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return data


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(schema)


def errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


def test_the_schema_is_a_valid_draft_7_schema(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def test_taplo_is_told_to_use_it() -> None:
    config = tomllib.loads((REPO / ".taplo.toml").read_text())
    (rule,) = config["rule"]
    assert "**/dagrun.toml" in rule["include"]
    assert (REPO / rule["schema"]["path"]).resolve() == SCHEMA_PATH


# ---------------------------------------------------------------- in step with manifest.py


def test_top_level_tables(schema: dict[str, Any]) -> None:
    assert set(schema["properties"]) == set(manifest.TOP_KEYS)
    assert schema["additionalProperties"] is False


def test_dagrun_keys(schema: dict[str, Any]) -> None:
    table = schema["properties"]["dagrun"]
    assert set(table["properties"]) == set(manifest.DAGRUN_KEYS)
    assert table["additionalProperties"] is False


def test_task_keys(schema: dict[str, Any]) -> None:
    task = schema["definitions"]["task"]
    assert set(task["properties"]) == set(manifest.TASK_KEYS)
    assert task["additionalProperties"] is False
    assert task["else"]["anyOf"][0] == {"required": ["cmd"]}  # or an aggregate (deps, no outputs)


@pytest.mark.parametrize("kind", sorted(manifest.EXECUTOR_KEYS))
def test_executor_keys(schema: dict[str, Any], kind: str) -> None:
    executor = schema["definitions"][kind]
    assert set(executor["properties"]) == set(manifest.EXECUTOR_KEYS[kind])
    assert executor["additionalProperties"] is False
    assert executor["properties"]["type"] == {"description": "The executor's kind.", "const": kind}


def test_every_executor_kind_is_offered(schema: dict[str, Any]) -> None:
    refs = json.dumps(schema["properties"]["executors"]["additionalProperties"])
    for kind in manifest.EXECUTOR_KEYS:
        assert f'"#/definitions/{kind}"' in refs


def test_every_property_has_a_description_for_editor_hovers(schema: dict[str, Any]) -> None:
    tables = [schema, schema["properties"]["dagrun"], *schema["definitions"].values()]
    for table in tables:
        for name, prop in table["properties"].items():
            assert prop.get("description") or "$ref" in prop, name


# ---------------------------------------------------------------- documents


@pytest.mark.parametrize("path", VALID, ids=[str(p.relative_to(REPO)) for p in VALID])
def test_valid_manifests_validate(validator: jsonschema.Draft7Validator, path: Path) -> None:
    doc = tomllib.loads(path.read_text())
    assert errors(validator, doc) == []
    compile(manifest.load(path))  # and dagrun agrees


def test_there_are_valid_examples() -> None:
    assert REPO / "examples" / "quickstart" / "dagrun.toml" in VALID
    assert REPO / "manifests" / "full.toml" in VALID


def test_full_manifest_uses_every_key() -> None:
    doc = tomllib.loads((REPO / "manifests" / "full.toml").read_text())
    tasks = doc["tasks"].values()
    assert set(doc) == set(manifest.TOP_KEYS)
    assert set(doc["dagrun"]) == set(manifest.DAGRUN_KEYS)
    assert set().union(*(t.keys() for t in tasks)) == set(manifest.TASK_KEYS)
    for kind, keys in manifest.EXECUTOR_KEYS.items():
        used = set().union(
            *(e.keys() for name, e in doc["executors"].items() if e.get("type", name) == kind)
        )
        assert used | {"type"} == set(keys), kind


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_schema_rejects_exactly_the_broken_manifests_marked_so(
    validator: jsonschema.Draft7Validator, path: Path
) -> None:
    """Structural mistakes are caught by the schema too; graph-level ones (cycles, ...) are not."""
    text = path.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assert path.stem.startswith("toml-")
        return
    marked = "\n# schema: invalid\n" in text
    assert bool(errors(validator, doc)) == marked


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"tasks": {"a": {"cmd": "x", "depz": []}}}, "'depz' was unexpected"),
        ({"tasks": {"a": {"cmd": "x", "threads": 0}}}, "0 is less than the minimum of 1"),
        ({"tasks": {"a": {"cmd": "x", "timeout": 0}}}, "less than or equal to the minimum of 0"),
        ({"tasks": {"a": {"cmd": "x", "always": "yes"}}}, "'yes' is not of type 'boolean'"),
        ({"tasks": {"a": {"cmd": "x", "matrix": {}}}}, "should be non-empty"),
        ({"tasks": {"a": {"cmd": "x", "matrix": {"n": {"glob": 3}}}}}, "is not valid under any"),
        ({"tasks": {"a": {"cmd": "x", "env": {"A": 1}}}}, "1 is not of type 'string'"),
        ({"tasks": {"a": {"inputs": ["x"]}}}, "is not valid under any of the given schemas"),
        ({"tasks": {"a": {"cmd": "x", "call": "m:f"}}}, "should not be valid under"),
        ({"tasks": {"a": {"call": "m"}}}, "does not match"),
        ({"dagrun": {"jobs": "4"}}, "'4' is not of type 'integer'"),
        ({"executors": {"lab": {"type": "ssh"}}}, "is not valid under any"),
        ({"executors": {"lab": {"max_jobs": 2}}}, "is not valid under any"),
        ({"executors": {"local": {"type": "ssh"}}}, "'local' was expected"),
    ],
)
def test_schema_rejects(
    validator: jsonschema.Draft7Validator, doc: dict[str, Any], fragment: str
) -> None:
    found = errors(validator, doc)
    assert any(fragment in e for e in found), found
    with pytest.raises(ManifestError):  # and so does dagrun
        manifest.build_manifest(
            "<test>",
            "/nonexistent",
            doc.get("dagrun", {}),
            doc.get("env", {}),
            doc.get("tasks", {}),
            doc.get("executors"),
        )


def test_schema_rejects_an_unknown_table(validator: jsonschema.Draft7Validator) -> None:
    assert errors(validator, {"target": {}}) == [
        "Additional properties are not allowed ('target' was unexpected)"
    ]
    with pytest.raises(ManifestError, match=r"key 'target': unknown top-level table"):
        manifest.parse("[target]\n")


def test_schema_accepts_a_matrix_of_every_value_kind(validator: jsonschema.Draft7Validator) -> None:
    doc = {
        "tasks": {
            "a": {
                "cmd": "x {n} {f.stem}",
                "matrix": {
                    "n": [1, 2.5, "three", True],
                    "f": {"glob": "data/*.csv"},
                },
            }
        }
    }
    assert errors(validator, doc) == []
