"""Security policy groups and their rules (§3.16, §3.18 search, §4.16)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Family, Fields, empty
from nanocore.api.schema import BOOL, ID_REPLY, STRING, UINT, array, enum, obj
from nanocore.model import SecurityPolicyGroup, SecurityPolicyRule
from nanocore.operations.core import Operations
from nanocore.operations.security import GroupSpec, RuleSpec

GROUP = obj(
    ("name", "user", "group", "enabled", "global", "default_action"),
    id=STRING, name=STRING, description=STRING, user=STRING, group=STRING, enabled=BOOL,
    **{"global": BOOL}, default_action=enum("accept", "reject"),
)  # fmt: skip
RULE = obj(
    ("action", "protocol", "to_port"),
    action=enum("accept", "reject"),
    protocol=enum("tcp", "udp", "icmp"),
    from_address=STRING,
    to_address=STRING,
    to_port=UINT,
)
GROUP_BODY = Body(
    (
        Field("name", required=True),
        Field("description"),
        Field("user", required=True),
        Field("group", required=True),
        Field("enabled", Kind.BOOL),
        Field("global", Kind.BOOL),
        Field("default_action", description="accept; anything else means reject"),
    )
)
RULE_BODY = Body(
    (
        Field("action", description="accept; anything else means reject"),
        Field("protocol", required=True, missing="invalid protocol: ",
              choices=("tcp", "udp", "icmp")),
        Field("from_address"),
        Field("to_address"),
        Field("to_port", Kind.UINT),
    )
)  # fmt: skip
ORDER_BODY = Body((Field("direction", description="up; anything else means down"),))


def group(item: SecurityPolicyGroup) -> dict[str, Any]:
    data: dict[str, Any] = {"id": item.id, "name": item.name}
    if item.description:
        data["description"] = item.description
    data["user"] = item.user
    data["group"] = item.group
    data["enabled"] = item.enabled
    data["global"] = item.is_global
    data["default_action"] = "accept" if item.accept else "reject"
    return data


def rule(item: SecurityPolicyRule) -> dict[str, Any]:
    data: dict[str, Any] = {
        "action": "accept" if item.accept else "reject",
        "protocol": item.protocol.value,
    }
    if item.source_address:
        data["from_address"] = item.source_address
    if item.target_address:
        data["to_address"] = item.target_address
    data["to_port"] = item.target_port
    return data


def _group_spec(body: Fields) -> GroupSpec:
    return GroupSpec(
        name=body.text("name"),
        description=body.text("description"),
        user=body.text("user"),
        group=body.text("group"),
        enabled=body.flag("enabled"),
        is_global=body.flag("global"),
        accept=body.text("default_action") == "accept",
    )


def rule_spec(body: Fields) -> RuleSpec:
    return RuleSpec(
        accept=body.text("action") == "accept",
        protocol=body.text("protocol"),
        from_address=body.text("from_address"),
        to_address=body.text("to_address"),
        to_port=body.integer("to_port"),
    )


groups: Family[Operations] = Family("security policy groups")

GROUP_PATH = "/security_policy_groups/:id"
RULES = "/security_policy_groups/:id/rules/"


@groups.route(
    "GET",
    "/search/security_policy_groups/*filepath",
    "Search policy groups by owner, group, enabled_only, global_only",
    response=array(GROUP),
    query=("owner", "group", "enabled_only", "global_only"),
)
def search(ops: Operations, call: Call) -> object:
    q = call.query
    found = ops.security_groups.search(
        q.get("owner", ""),
        q.get("group", ""),
        q.get("enabled_only") == "true",
        q.get("global_only") == "true",
    )
    return [group(item) for item in found]


@groups.route("GET", GROUP_PATH, "Get a policy group", response=GROUP)
def get_group(ops: Operations, call: Call) -> object:
    return group(ops.security_groups.get(call.params["id"]))


@groups.route(
    "POST", "/security_policy_groups/", "Create a policy group", body=GROUP_BODY, response=ID_REPLY
)
def create_group(ops: Operations, call: Call) -> Deferred[object]:
    created = ops.security_groups.create(_group_spec(call.body))
    return created.addCallback(lambda group_id: {"id": group_id})


@groups.route("PUT", GROUP_PATH, "Replace a policy group (rules kept)", body=GROUP_BODY)
def modify_group(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.security_groups.modify(call.params["id"], _group_spec(call.body)))


@groups.route("DELETE", GROUP_PATH, "Delete a policy group")
def delete_group(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.security_groups.delete(call.params["id"]))


@groups.route("GET", RULES, "List the rules of a policy group in order", response=array(RULE))
def list_rules(ops: Operations, call: Call) -> object:
    return [rule(item) for item in ops.security_groups.rules(call.params["id"])]


@groups.route("POST", RULES, "Append a rule", body=RULE_BODY)
def add_rule(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.security_groups.add_rule(call.params["id"], rule_spec(call.body)))


@groups.route("PUT", RULES + ":index", "Replace the rule at an index", body=RULE_BODY)
def modify_rule(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(ops.security_groups.modify_rule(p["id"], p["index"], rule_spec(call.body)))


@groups.route("DELETE", RULES + ":index", "Remove the rule at an index")
def remove_rule(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(ops.security_groups.remove_rule(p["id"], p["index"]))


@groups.route("PUT", RULES + ":index/order", "Swap a rule with its neighbour", body=ORDER_BODY)
def move_rule(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(
        ops.security_groups.move_rule(p["id"], p["index"], call.body.text("direction") == "up")
    )
