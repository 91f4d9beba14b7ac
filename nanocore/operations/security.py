"""Security policy groups and their ordered rules (§4.16).

The changes of one group run in turn (:class:`~nanocore.operations.claims.Turns`), each
deciding on what the one before it committed, as Nano's single resource loop ran them: an
index, "already defined" or "already on top" is judged on the latest rules, and a modify of
the group keeps the rules committed just before it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from attrs import evolve, frozen
from twisted.internet.defer import Deferred

from nanocore.model import SecurityPolicyGroup, SecurityPolicyRule, is_ipv4
from nanocore.operations.base import Context, build, check_label, check_name
from nanocore.operations.claims import ClaimKind, Turns
from nanocore.operations.errors import AlreadyExists, InvalidRequest, UnknownEntity
from nanocore.store import Delete, Insert, Put

PROTOCOLS = ("tcp", "udp", "icmp")

#: A group name from its uniqueness check to the commit that makes it visible.
GROUP_NAME: ClaimKind[None] = ClaimKind(
    "policy group name",
    lambda held: AlreadyExists(f"security policy group '{held.key}' already exists"),
)


@frozen
class GroupSpec:
    name: str
    description: str
    user: str
    group: str
    enabled: bool
    is_global: bool
    accept: bool


@frozen
class RuleSpec:
    accept: bool
    protocol: str
    from_address: str
    to_address: str
    to_port: int


def parse_index(text: str) -> int:
    """A rule index from the path: a non-negative decimal integer."""
    if not text.isascii() or not text.isdigit():
        raise InvalidRequest(f"invalid index {text}")
    return int(text)


def build_rule(spec: RuleSpec) -> SecurityPolicyRule:
    """The rule ``spec`` asks for, or the :class:`InvalidRequest` naming its first bad field."""
    if spec.protocol not in PROTOCOLS:
        raise InvalidRequest(f"invalid protocol: {spec.protocol}")
    if spec.from_address and not is_ipv4(spec.from_address):
        raise InvalidRequest(f"invalid source address '{spec.from_address}'")
    if spec.to_address and not is_ipv4(spec.to_address):
        raise InvalidRequest(f"invalid target address '{spec.to_address}'")
    if spec.to_port > 65535:
        raise InvalidRequest(f"invalid target port {spec.to_port}")
    return build(
        SecurityPolicyRule,
        accept=spec.accept,
        protocol=spec.protocol,
        source_address=spec.from_address,
        target_address=spec.to_address,
        target_port=spec.to_port,
    )


class SecurityGroups:
    def __init__(self, context: Context) -> None:
        self._context = context
        #: One turn per group id: its changes decide and commit one after another.
        self._turns = Turns()

    def _in_turn(self, group_id: str, change: Callable[[], Deferred[None]]) -> Deferred[None]:
        """Decide and commit ``change`` once every earlier change of the group has ended."""
        return self._turns.run(group_id, change)

    def get(self, group_id: str) -> SecurityPolicyGroup:
        group = self._context.view.policy_groups.get(group_id)
        if group is None:
            raise UnknownEntity(f"invalid security policy group '{group_id}'")
        return group

    def search(
        self, owner: str, group: str, enabled_only: bool, global_only: bool
    ) -> list[SecurityPolicyGroup]:
        return [
            item
            for item in self._context.view.policy_groups.values()
            if (not owner or item.user == owner)
            and (not group or item.group == group)
            and (not enabled_only or item.enabled)
            and (not global_only or item.is_global)
        ]

    def _check(self, spec: GroupSpec, group_id: str) -> None:
        if not spec.name:
            raise InvalidRequest("name required")
        check_label("security policy group", spec.name)
        check_name("user", spec.user)
        check_name("group", spec.group)
        for other in self._context.view.policy_groups.values():
            if other.name == spec.name and other.id != group_id:
                raise AlreadyExists(f"security policy group '{spec.name}' already exists")

    def create(self, spec: GroupSpec) -> Deferred[str]:
        group_id = str(uuid.uuid4())
        self._check(spec, group_id)
        group = build(SecurityPolicyGroup, id=group_id, **_group_fields(spec))
        claim = self._context.claims.take(GROUP_NAME, spec.name, None)
        d = self._context.commit(Insert(group), holding=(claim,))
        return d.addCallback(lambda _: group_id)

    def modify(self, group_id: str, spec: GroupSpec) -> Deferred[None]:
        return self._in_turn(group_id, lambda: self._modify(group_id, spec))

    def _modify(self, group_id: str, spec: GroupSpec) -> Deferred[None]:
        current = self.get(group_id)
        self._check(spec, group_id)
        group = build(SecurityPolicyGroup, id=group_id, rules=current.rules, **_group_fields(spec))
        if group == current:
            raise InvalidRequest("no need to change")
        claim = self._context.claims.take(GROUP_NAME, spec.name, None)
        return self._context.commit(Put(group), holding=(claim,))

    def delete(self, group_id: str) -> Deferred[None]:
        return self._in_turn(group_id, lambda: self._delete(group_id))

    def _delete(self, group_id: str) -> Deferred[None]:
        self.get(group_id)
        return self._context.commit(Delete(SecurityPolicyGroup, group_id))

    # rules

    def rules(self, group_id: str) -> tuple[SecurityPolicyRule, ...]:
        return self.get(group_id).rules

    def _duplicate(self, group: SecurityPolicyGroup, rule: SecurityPolicyRule) -> InvalidRequest:
        return InvalidRequest(
            f"rule {rule.protocol.value}:{rule.source_address}:{rule.target_port} "
            f"already defined in policy group '{group.name}'"
        )

    def _index(self, group: SecurityPolicyGroup, text: str) -> int:
        index = parse_index(text)
        if index >= len(group.rules):
            raise InvalidRequest(f"invalid index {index}")
        return index

    def _save_rules(
        self, group: SecurityPolicyGroup, rules: list[SecurityPolicyRule]
    ) -> Deferred[None]:
        return self._context.commit(Put(evolve(group, rules=tuple(rules))))

    def add_rule(self, group_id: str, spec: RuleSpec) -> Deferred[None]:
        return self._in_turn(group_id, lambda: self._add_rule(group_id, spec))

    def _add_rule(self, group_id: str, spec: RuleSpec) -> Deferred[None]:
        group = self.get(group_id)
        rule = build_rule(spec)
        if any(other.identity == rule.identity for other in group.rules):
            raise self._duplicate(group, rule)
        return self._save_rules(group, [*group.rules, rule])

    def modify_rule(self, group_id: str, index_text: str, spec: RuleSpec) -> Deferred[None]:
        return self._in_turn(group_id, lambda: self._modify_rule(group_id, index_text, spec))

    def _modify_rule(self, group_id: str, index_text: str, spec: RuleSpec) -> Deferred[None]:
        group = self.get(group_id)
        index = self._index(group, index_text)
        rule = build_rule(spec)
        if group.rules[index] == rule:
            raise InvalidRequest("no need to change")
        for position, other in enumerate(group.rules):
            if position != index and other.identity == rule.identity:
                raise self._duplicate(group, rule)
        rules = list(group.rules)
        rules[index] = rule
        return self._save_rules(group, rules)

    def remove_rule(self, group_id: str, index_text: str) -> Deferred[None]:
        return self._in_turn(group_id, lambda: self._remove_rule(group_id, index_text))

    def _remove_rule(self, group_id: str, index_text: str) -> Deferred[None]:
        group = self.get(group_id)
        index = self._index(group, index_text)
        rules = list(group.rules)
        del rules[index]
        return self._save_rules(group, rules)

    def move_rule(self, group_id: str, index_text: str, up: bool) -> Deferred[None]:
        return self._in_turn(group_id, lambda: self._move_rule(group_id, index_text, up))

    def _move_rule(self, group_id: str, index_text: str, up: bool) -> Deferred[None]:
        group = self.get(group_id)
        index = self._index(group, index_text)
        if up and index == 0:
            raise InvalidRequest("already on top")
        if not up and index == len(group.rules) - 1:
            raise InvalidRequest("already on bottom")
        other = index - 1 if up else index + 1
        rules = list(group.rules)
        rules[index], rules[other] = rules[other], rules[index]
        return self._save_rules(group, rules)


def _group_fields(spec: GroupSpec) -> dict[str, object]:
    return {
        "name": spec.name,
        "description": spec.description,
        "user": spec.user,
        "group": spec.group,
        "enabled": spec.enabled,
        "is_global": spec.is_global,
        "accept": spec.accept,
    }
