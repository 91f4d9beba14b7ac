"""Security policy groups and their rules (§3.16, §3.18 search, §4.16)."""

from __future__ import annotations

from typing import Any

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.pools import empty
from nanocore.api.route import Call, Route
from nanocore.api.schema import BOOL, ID_REPLY, STRING, UINT, array, enum, obj
from nanocore.model import SecurityPolicyGroup, SecurityPolicyRule
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


def _group_spec(body: Any) -> GroupSpec:
    return GroupSpec(
        name=body["name"],
        description=body["description"],
        user=body["user"],
        group=body["group"],
        enabled=body["enabled"],
        is_global=body["global"],
        accept=body["default_action"] == "accept",
    )


def _rule_spec(body: Any) -> RuleSpec:
    return RuleSpec(
        accept=body["action"] == "accept",
        protocol=body["protocol"],
        from_address=body["from_address"],
        to_address=body["to_address"],
        to_port=body["to_port"],
    )


def routes(ops: Any) -> list[Route]:
    def search(call: Call) -> Any:
        q = call.query
        found = ops.security_groups.search(
            q.get("owner", ""),
            q.get("group", ""),
            q.get("enabled_only") == "true",
            q.get("global_only") == "true",
        )
        return [group(item) for item in found]

    def get_group(call: Call) -> Any:
        return group(ops.security_groups.get(call.params["id"]))

    def create_group(call: Call) -> Any:
        d = ops.security_groups.create(_group_spec(call.body))
        return d.addCallback(lambda group_id: {"id": group_id})

    def modify_group(call: Call) -> Any:
        return empty(ops.security_groups.modify(call.params["id"], _group_spec(call.body)))

    def delete_group(call: Call) -> Any:
        return empty(ops.security_groups.delete(call.params["id"]))

    def list_rules(call: Call) -> Any:
        return [rule(item) for item in ops.security_groups.rules(call.params["id"])]

    def add_rule(call: Call) -> Any:
        return empty(ops.security_groups.add_rule(call.params["id"], _rule_spec(call.body)))

    def modify_rule(call: Call) -> Any:
        p = call.params
        return empty(ops.security_groups.modify_rule(p["id"], p["index"], _rule_spec(call.body)))

    def remove_rule(call: Call) -> Any:
        p = call.params
        return empty(ops.security_groups.remove_rule(p["id"], p["index"]))

    def move_rule(call: Call) -> Any:
        p = call.params
        return empty(
            ops.security_groups.move_rule(p["id"], p["index"], call.body["direction"] == "up")
        )

    s = "security policy groups"
    base = "/security_policy_groups/"
    rules = base + ":id/rules/"
    return [
        Route("GET", "/search/security_policy_groups/*filepath", search,
              "Search policy groups by owner, group, enabled_only, global_only", s,
              response=array(GROUP), query=("owner", "group", "enabled_only", "global_only")),
        Route("GET", base + ":id", get_group, "Get a policy group", s, response=GROUP),
        Route("POST", base, create_group, "Create a policy group", s, body=GROUP_BODY,
              response=ID_REPLY),
        Route("PUT", base + ":id", modify_group, "Replace a policy group (rules kept)", s,
              body=GROUP_BODY),
        Route("DELETE", base + ":id", delete_group, "Delete a policy group", s),
        Route("GET", rules, list_rules, "List the rules of a policy group in order", s,
              response=array(RULE)),
        Route("POST", rules, add_rule, "Append a rule", s, body=RULE_BODY),
        Route("PUT", rules + ":index", modify_rule, "Replace the rule at an index", s,
              body=RULE_BODY),
        Route("DELETE", rules + ":index", remove_rule, "Remove the rule at an index", s),
        Route("PUT", rules + ":index/order", move_rule, "Swap a rule with its neighbour", s,
              body=ORDER_BODY),
    ]  # fmt: skip
