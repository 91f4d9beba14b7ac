"""A guest's own firewall, kept by its Cell (api-reference §4.17, cell-protocol.md §5.9).

Rules are validated where they enter, before the guest is looked up: the protocol
(``invalid protocol '<p>'``), IPv4 addresses only (the Cell receives them as 32-bit integers;
Nano's IPv6 literals passed its check and then broke the rule), and a target port of 1-65535
(a stock Cell never answers a rule with port 0, so the client waited for a timeout). The
address messages name the field that is wrong; Nano swapped them. Indexes are non-negative
integers; whether one exists is the Cell's to say.

Moving a rule sends ``ChangeGuestRuleOrderRequest`` and waits for its own response (Nano routed
it through the modify handler, whose error replies carried the wrong id).
"""

from __future__ import annotations

import ipaddress

from attrs import frozen
from twisted.internet.defer import Deferred

from nanocore.cluster.message import INT64_MAX, Message, MessageID, ParamKey
from nanocore.model import Protocol, SecurityPolicyRule
from nanocore.operations.base import refusals_deferred
from nanocore.operations.cells import CellRefused
from nanocore.operations.errors import InvalidRequest
from nanocore.operations.guests import GuestAccess
from nanocore.operations.security import PROTOCOLS, RuleSpec, build_rule, parse_index

#: ``Mode`` of ``ChangeGuestRuleOrderRequest``: up (>= 0) or down (< 0).
MOVE_UP, MOVE_DOWN = 1, -1
_PROTOCOLS = tuple(Protocol)
_IPV4_MAX = 2**32 - 1


@frozen
class GuestPolicy:
    """What a guest's Cell enforces: the rules in order, then the default action."""

    accept: bool
    rules: tuple[SecurityPolicyRule, ...]


def guest_rule(spec: RuleSpec) -> SecurityPolicyRule:
    """The rule ``spec`` asks for, or the refusal naming its first bad field."""
    if spec.protocol not in PROTOCOLS:
        raise InvalidRequest(f"invalid protocol '{spec.protocol}'")
    rule = build_rule(spec)
    if rule.target_port == 0:
        raise InvalidRequest("invalid target port 0")
    return rule


def rule_index(text: str) -> int:
    """A rule index from the path: a non-negative integer a Cell can be sent."""
    index = parse_index(text)
    if index > INT64_MAX:
        raise InvalidRequest(f"invalid index {text}")
    return index


def _address(cell: str, value: int) -> str:
    if not 0 <= value <= _IPV4_MAX:
        raise CellRefused(f"cell '{cell}' sent address {value}, not IPv4")
    return str(ipaddress.IPv4Address(value)) if value else ""


def _policy(cell: str, reply: Message) -> GuestPolicy:
    arrays = reply.uint_array_params
    sources = arrays.get(ParamKey.From, ())
    targets = arrays.get(ParamKey.To, ())
    ports = arrays.get(ParamKey.Port, ())
    protocols = arrays.get(ParamKey.Protocol, ())
    actions = arrays.get(ParamKey.Action, ())
    count = len(sources)
    if not (len(targets) == len(ports) == len(protocols) == count and len(actions) == count + 1):
        raise CellRefused(
            f"cell '{cell}' sent a policy of {count} sources, {len(targets)} targets, "
            f"{len(ports)} ports, {len(protocols)} protocols and {len(actions)} actions"
        )
    if any(action > 1 for action in actions):
        raise CellRefused(f"cell '{cell}' sent actions {list(actions)}, not 0 or 1")
    rules = []
    for source, target, port, protocol, action in zip(
        sources, targets, ports, protocols, actions, strict=False
    ):
        if protocol >= len(_PROTOCOLS) or port > 65535:
            raise CellRefused(f"cell '{cell}' sent a rule of protocol {protocol}, port {port}")
        rules.append(
            SecurityPolicyRule(
                protocol=_PROTOCOLS[protocol],
                target_port=port,
                accept=action == 0,
                source_address=_address(cell, source),
                target_address=_address(cell, target),
            )
        )
    return GuestPolicy(accept=actions[-1] == 0, rules=tuple(rules))


def _rule_params(rule: SecurityPolicyRule) -> dict[str, object]:
    action, protocol, source, target, port = rule.flatten()
    return {
        "bool_params": {ParamKey.Action: action == 0},
        "uint_params": {
            ParamKey.Protocol: protocol,
            ParamKey.From: source,
            ParamKey.To: target,
            ParamKey.Port: port,
        },
    }


class GuestFirewall:
    """Read and change the policy a guest's Cell enforces."""

    def __init__(self, access: GuestAccess) -> None:
        self._access = access

    def _ask(self, instance_id: str, message_id: int, **params: object) -> Deferred[Message]:
        instance = self._access.instance(instance_id)
        strings = {ParamKey.Instance: instance_id}
        message = Message(id=message_id, string_params=strings, **params)  # type: ignore[arg-type]
        return self._access.forward_for(instance, message)

    @refusals_deferred
    def policy(self, instance_id: str) -> Deferred[GuestPolicy]:
        cell = self._access.instance(instance_id).cell
        asking = self._ask(instance_id, MessageID.GetGuestRuleRequest)
        return asking.addCallback(lambda reply: _policy(cell, reply))

    @refusals_deferred
    def set_default_action(self, instance_id: str, accept: bool) -> Deferred[None]:
        asking = self._ask(
            instance_id,
            MessageID.ChangeGuestRuleDefaultActionRequest,
            bool_params={ParamKey.Action: accept},
        )
        return asking.addCallback(lambda _: None)

    @refusals_deferred
    def add_rule(self, instance_id: str, spec: RuleSpec) -> Deferred[None]:
        rule = guest_rule(spec)
        asking = self._ask(instance_id, MessageID.AddGuestRuleRequest, **_rule_params(rule))
        return asking.addCallback(lambda _: None)

    @refusals_deferred
    def modify_rule(self, instance_id: str, index_text: str, spec: RuleSpec) -> Deferred[None]:
        index = rule_index(index_text)
        rule = guest_rule(spec)
        params = _rule_params(rule)
        params["int_params"] = {ParamKey.Index: index}
        asking = self._ask(instance_id, MessageID.ModifyGuestRuleRequest, **params)
        return asking.addCallback(lambda _: None)

    @refusals_deferred
    def remove_rule(self, instance_id: str, index_text: str) -> Deferred[None]:
        index = rule_index(index_text)
        asking = self._ask(
            instance_id, MessageID.RemoveGuestRuleRequest, int_params={ParamKey.Index: index}
        )
        return asking.addCallback(lambda _: None)

    @refusals_deferred
    def move_rule(self, instance_id: str, index_text: str, up: bool) -> Deferred[None]:
        index = rule_index(index_text)
        asking = self._ask(
            instance_id,
            MessageID.ChangeGuestRuleOrderRequest,
            int_params={ParamKey.Index: index, ParamKey.Mode: MOVE_UP if up else MOVE_DOWN},
        )
        return asking.addCallback(lambda _: None)
