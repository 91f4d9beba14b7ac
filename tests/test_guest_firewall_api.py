"""A guest's own firewall end to end: the signed API, the real store, FakeCells over loopback
TLS (api-reference §4.0 PolicyRule, §4.17; cell-protocol.md §5.9)."""

from __future__ import annotations

from typing import Any

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.operations.cells import CellRefused
from nanocore.operations.guest_firewall import _policy
from tests.guestfixtures import GuestClusterCase


def rule(port: int, **fields: Any) -> dict[str, Any]:
    return {"action": "accept", "protocol": "tcp", "to_port": port, **fields}


class FirewallTests(GuestClusterCase):
    creation_time = 0.0

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.guest = await self.created()
        self.cell = self.cells[self.store.view.instances[self.guest].cell]
        self.base = f"/guests/{self.guest}/security_policy/"

    def last(self, message_id: int) -> Message:
        return [r for r in self.cell.received if r.id == message_id][-1]

    async def test_rules_added_modified_moved_removed(self) -> None:
        base, rules = self.base, self.base + "rules/"
        self.assertEqual(await self.ok("GET", base), {"default_action": "accept"})
        await self.ok("POST", rules, rule(22, from_address="10.0.0.1"))
        add = self.last(MessageID.AddGuestRuleRequest)
        self.assertEqual(
            (add.bool_params, add.uint_params),
            ({ParamKey.Action: True},
             {ParamKey.Protocol: 0, ParamKey.From: 0x0A000001, ParamKey.To: 0,
              ParamKey.Port: 22}),
        )  # fmt: skip
        await self.ok(
            "POST", rules, rule(53, protocol="udp", action="drop", to_address="10.0.0.9")
        )
        await self.ok("POST", rules, rule(1, protocol="icmp"))
        await self.ok("PUT", rules + "2", rule(8, protocol="icmp", action="reject"))
        # Move sends its own request and waits for its own answer (Nano routed it to modify).
        await self.ok("PUT", rules + "2/order", {"direction": "up"})
        move = self.last(MessageID.ChangeGuestRuleOrderRequest)
        self.assertEqual(move.int_params, {ParamKey.Index: 2, ParamKey.Mode: 1})
        await self.ok("PUT", rules + "0/order", {"direction": "down"})
        self.assertEqual(
            self.last(MessageID.ChangeGuestRuleOrderRequest).int_params,
            {ParamKey.Index: 0, ParamKey.Mode: -1},
        )
        await self.ok("PUT", base + "default_action", {"action": "reject"})
        self.assertEqual(
            await self.ok("GET", base),
            {
                "default_action": "reject",
                "rules": [
                    {"action": "reject", "protocol": "icmp", "to_port": 8},
                    {"action": "accept", "protocol": "tcp", "from_address": "10.0.0.1",
                     "to_port": 22},
                    {"action": "reject", "protocol": "udp", "to_address": "10.0.0.9",
                     "to_port": 53},
                ],
            },
        )  # fmt: skip
        await self.ok("DELETE", rules + "1")
        policy = await self.ok("GET", base)
        self.assertEqual([r["to_port"] for r in policy["rules"]], [8, 53])
        # Nothing of a guest's policy is kept by Core.
        self.assertEqual(self.store.view.instances[self.guest].created, True)

    async def test_rules_are_validated_before_the_guest_is_looked_up(self) -> None:
        rules = "/guests/nope/security_policy/rules/"
        for body, message in (
            (None, "EOF"),
            ({"to_port": 22}, "invalid protocol ''"),
            (rule(22, protocol="sctp"), "invalid protocol 'sctp'"),
            (rule(22, from_address="::1"), "invalid source address '::1'"),
            (rule(22, to_address="10.0.0.256"), "invalid target address '10.0.0.256'"),
            (rule(22, from_address="010.0.0.1"), "invalid source address '010.0.0.1'"),
            (rule(70000), "invalid target port 70000"),
            (rule(0), "invalid target port 0"),
        ):
            self.assertEqual(await self.refused("POST", rules, body), message, body)
            if body is not None:
                self.assertEqual(await self.refused("PUT", rules + "0", body), message, body)
        self.assertEqual(await self.refused("POST", rules, rule(22)), "invalid instance 'nope'")
        for method, path, body in (
            ("PUT", "x", rule(22)),
            ("PUT", "-1", rule(22)),
            ("DELETE", "x", None),
            ("PUT", "x/order", {"direction": "up"}),
            ("PUT", "99999999999999999999", rule(22)),
        ):
            index = path.split("/")[0]
            self.assertEqual(
                await self.refused(method, self.base + "rules/" + path, body),
                f"invalid index {index}",
            )
        self.assertEqual(
            [r for r in self.cell.received if r.id == MessageID.ModifyGuestRuleRequest], []
        )

    async def test_the_cells_refusals_are_relayed(self) -> None:
        rules = self.base + "rules/"
        await self.ok("POST", rules, rule(22))
        for method, path, body, message in (
            ("POST", rules, rule(22, action="reject"),
             "tcp:->:22 already defined on 0th rule of instance 'team.vm1'"),
            ("PUT", rules + "0", rule(22), "no need to change"),
            ("PUT", rules + "3", rule(80), "invalid rule index 3 for instance team.vm1"),
            ("DELETE", rules + "3", None, "invalid rule index 3 for instance 'team.vm1'"),
            ("PUT", rules + "0/order", {"direction": "up"}, "already on top"),
            ("PUT", rules + "0/order", {}, "already on bottom"),
            ("PUT", self.base + "default_action", {"action": "accept"}, "no need to change"),
        ):  # fmt: skip
            self.assertEqual(await self.refused(method, path, body), message, (method, path))
        self.assertEqual(await self.refused("GET", "/guests/nope/security_policy/"),
                         "invalid instance 'nope'")  # fmt: skip

    def test_a_policy_that_does_not_add_up_is_refused(self) -> None:
        def reply(**arrays: tuple[int, ...]) -> Message:
            return Message(
                id=MessageID.GetGuestRuleResponse,
                uint_array_params={ParamKey[k]: v for k, v in arrays.items()},
            )

        good = reply(From=(0,), To=(0,), Port=(22,), Protocol=(0,), Action=(0, 1))
        self.assertEqual(len(_policy("c", good).rules), 1)
        for bad, message in (
            (reply(From=(0,), To=(0,), Port=(22,), Protocol=(0,), Action=(0,)),
             "cell 'c' sent a policy of 1 sources, 1 targets, 1 ports, 1 protocols and 1 actions"),
            (reply(From=(0,), To=(0,), Port=(22,), Protocol=(7,), Action=(0, 1)),
             "cell 'c' sent a rule of protocol 7, port 22"),
            (reply(From=(2**40,), To=(0,), Port=(22,), Protocol=(0,), Action=(0, 1)),
             f"cell 'c' sent address {2**40}, not IPv4"),
            (reply(Action=(2,)), "cell 'c' sent actions [2], not 0 or 1"),
        ):  # fmt: skip
            with self.assertRaises(CellRefused) as refused:
                _policy("c", bad)
            self.assertEqual(refused.exception.message, message)


class OverKCPTests(GuestClusterCase):
    """The firewall over the link stock Cells use."""

    wire = "kcp"
    creation_time = 0.0

    async def test_add_move_get(self) -> None:
        guest = await self.created()
        rules = f"/guests/{guest}/security_policy/rules/"
        await self.ok("POST", rules, rule(22))
        await self.ok("POST", rules, rule(80))
        await self.ok("PUT", rules + "1/order", {"direction": "up"})
        policy = await self.ok("GET", f"/guests/{guest}/security_policy/")
        self.assertEqual([r["to_port"] for r in policy["rules"]], [80, 22])
