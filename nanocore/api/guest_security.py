"""A guest's own firewall, forwarded to its Cell (§3.17, §4.17)."""

from __future__ import annotations

from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field
from nanocore.api.route import Call, Family, empty
from nanocore.api.schema import array, enum, obj
from nanocore.api.security import ORDER_BODY, RULE, RULE_BODY, rule, rule_spec
from nanocore.operations.core import Operations
from nanocore.operations.guest_firewall import GuestPolicy

POLICY = obj(("default_action",), default_action=enum("accept", "reject"), rules=array(RULE))
#: The policy group's rule body, but a missing protocol is the operation's to refuse, in the
#: guest route's words (``invalid protocol ''``).
GUEST_RULE_BODY = Body(
    tuple(
        evolve(field, required=False, missing="") if field.name == "protocol" else field
        for field in RULE_BODY.fields
    )
)
ACTION_BODY = Body((Field("action", description="accept; anything else means reject"),))


def policy(item: GuestPolicy) -> dict[str, Any]:
    data: dict[str, Any] = {"default_action": "accept" if item.accept else "reject"}
    if item.rules:
        data["rules"] = [rule(each) for each in item.rules]
    return data


guest_security: Family[Operations] = Family("guest security policy")

POLICY_PATH = "/guests/:id/security_policy/"
RULES = POLICY_PATH + "rules/"


@guest_security.route("GET", POLICY_PATH, "A guest's firewall policy", response=POLICY)
def get_policy(ops: Operations, call: Call) -> Deferred[dict[str, Any]]:
    return ops.guest_firewall.policy(call.params["id"]).addCallback(policy)


@guest_security.route(
    "PUT", POLICY_PATH + "default_action", "Set a guest's default action", body=ACTION_BODY
)
def set_default_action(ops: Operations, call: Call) -> Deferred[str]:
    accept = call.body.text("action") == "accept"
    return empty(ops.guest_firewall.set_default_action(call.params["id"], accept))


@guest_security.route("POST", RULES, "Append a rule to a guest's policy", body=GUEST_RULE_BODY)
def add_rule(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.guest_firewall.add_rule(call.params["id"], rule_spec(call.body)))


@guest_security.route("PUT", RULES + ":index", "Replace a guest's rule", body=GUEST_RULE_BODY)
def modify_rule(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(ops.guest_firewall.modify_rule(p["id"], p["index"], rule_spec(call.body)))


@guest_security.route("DELETE", RULES + ":index", "Remove a guest's rule")
def remove_rule(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(ops.guest_firewall.remove_rule(p["id"], p["index"]))


@guest_security.route(
    "PUT", RULES + ":index/order", "Swap a guest's rule with its neighbour", body=ORDER_BODY
)
def move_rule(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    up = call.body.text("direction") == "up"
    return empty(ops.guest_firewall.move_rule(p["id"], p["index"], up))
