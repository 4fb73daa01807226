"""The C++ plugin and the exporter agree on the node's name, domain, version and attributes."""

from __future__ import annotations

import re
from pathlib import Path

from nuwa_export.constants import OP_ATTRIBUTES, OP_DOMAIN, OP_NAME, OP_VERSION

HEADER = Path(__file__).resolve().parents[2] / "engines" / "plugin" / "nuwa_op_constants.h"


def header_constants() -> dict[str, str | int]:
    """``constexpr`` string and int constants of the header, by name."""
    text = HEADER.read_text()
    values: dict[str, str | int] = {}
    for name, value in re.findall(r"constexpr\s+char\s+const\s*\*\s*(\w+)\s*=\s*\"([^\"]*)\"\s*;", text):
        values[name] = value
    for name, value in re.findall(r"constexpr\s+int\s+(\w+)\s*=\s*(-?\d+)\s*;", text):
        values[name] = int(value)
    return values


def test_op_identity_matches_the_exporter():
    c = header_constants()
    assert c["kOP_NAME"] == OP_NAME
    assert c["kOP_DOMAIN"] == OP_DOMAIN
    assert c["kOP_VERSION"] == OP_VERSION


def test_attribute_names_match_in_order():
    c = header_constants()
    assert (c["kATTR_GRID"], c["kATTR_DISTANCE"], c["kATTR_PERCENTILE"], c["kATTR_SELF_WEIGHT"]) == OP_ATTRIBUTES
    assert [name for name in c if name.startswith("kATTR_")] == ["kATTR_GRID", "kATTR_DISTANCE", "kATTR_PERCENTILE",
                                                                 "kATTR_SELF_WEIGHT"]


def test_plugin_reads_serialises_and_lists_every_attribute():
    # The parser hands the creator only the fields getFieldNames() lists, and an engine keeps only
    # what getFieldsToSerialize() returns: an attribute missing from either is silently dropped.
    plugin = (HEADER.parent / "NuwaSwarmAggregatePlugin.cpp").read_text()
    constants = [name for name in header_constants() if name.startswith("kATTR_")]
    assert len(constants) == len(OP_ATTRIBUTES)
    for name in constants:
        assert re.search(rf"mFields\.emplace_back\({name},", plugin), f"{name} missing from getFieldNames()"
        assert re.search(rf"mFieldsToSerialize\.emplace_back\({name},", plugin), f"{name} is not serialised"
        assert re.search(rf"strcmp\(f\.name, {name}\)", plugin), f"createPlugin does not read {name}"


def test_plugin_lookup_keys_match_what_the_onnx_parser_asks_for():
    # The parser looks up (op_type, node attr plugin_version or "1", node attr plugin_namespace or "").
    # The exporter writes neither attribute, so the plugin must be version "1", namespace "".
    c = header_constants()
    assert c["kPLUGIN_VERSION"] == str(OP_VERSION) == "1"
    assert c["kPLUGIN_NAMESPACE"] == ""


def test_plugin_sources_use_the_header_not_literals():
    plugin = (HEADER.parent / "NuwaSwarmAggregatePlugin.cpp").read_text()
    for literal in (OP_NAME, *OP_ATTRIBUTES):
        assert f'"{literal}"' not in plugin, f'NuwaSwarmAggregatePlugin.cpp spells "{literal}" instead of the constant'
