"""Print the cost of the message codec and of one in-memory transaction.

Run from the project root: ``python benchmarks/message_bench.py``.
No network: this isolates the CPU a link spends per message above the transport. Times are
this thread's CPU time (steadier than wall time on a shared machine), best of five. ``fast`` is
the links' codec (``cluster/_fastcodec.py``), ``plain`` the definition (``cluster/message.py``).
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock

from nanocore.cluster import _fastcodec as fast
from nanocore.cluster import message as plain
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import Transactions, reply_to

SMALL = Message(
    id=MessageID.GetAuthRequest, from_session=5, string_params={ParamKey.Guest: "guest-0001"}
)
STATUS = Message(
    id=MessageID.CellStatusReportEvent,
    uint_params={ParamKey.Core: 8},
    float_params={ParamKey.Usage: 3.5},
    uint_array_params={
        ParamKey.Memory: (6_000_000_000, 16_000_000_000),
        ParamKey.Disk: (100_000_000_000, 200_000_000_000),
        ParamKey.IO: (0, 0, 0, 0),
        ParamKey.Speed: (0, 0, 0, 0),
    },
)


def per_second(statement: object, number: int) -> float:
    seconds = min(
        timeit.repeat(statement, number=number, repeat=5, timer=time.thread_time)  # type: ignore[arg-type]
    )
    return number / seconds


def main() -> None:
    number = 20_000
    for label, message in (("small request", SMALL), ("status report", STATUS)):
        data = fast.encode(message)
        print(f"{label} ({len(data)} bytes):")
        for name, codec in (("fast", fast), ("plain", plain)):
            encode_rate = per_second(lambda m=message, c=codec: c.encode(m), number)
            decode_rate = per_second(lambda d=data, c=codec: c.decode(d), number)
            print(f"  {name:5}  encode {encode_rate:>10,.0f} /s   decode {decode_rate:>10,.0f} /s")
    fields = {"id": SMALL.id, "from_session": 5, "string_params": {ParamKey.Guest: "guest-0001"}}
    print(f"Message() of a small request: {per_second(lambda: Message(**fields), number):,.0f} /s")

    transactions = Transactions(Clock(), timeout=10)
    sent: list[Message] = []

    def round_trip() -> None:
        # Core side: request; Cell side: decode, answer; Core side: decode, deliver.
        transactions.request(sent.append, SMALL)
        request = fast.decode(fast.encode(sent.pop()))
        reply = fast.decode(fast.encode(reply_to(request, string_params={ParamKey.User: "root"})))
        transactions.deliver(reply)

    rate = per_second(round_trip, number)
    print(f"request/reply through codec + Transactions: {rate:,.0f} round trips/s (one core)")


if __name__ == "__main__":
    main()
