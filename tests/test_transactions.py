"""Transactions: reply, failure, timeout, late reply dropped, cancellation, progress."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import (
    TIMED_OUT_KEPT,
    TOKEN_MAX,
    CellError,
    Transactions,
    TransactionTimeout,
    reply_ids,
    reply_to,
)

REQUEST = Message(id=MessageID.GetAuthRequest, string_params={ParamKey.Guest: "g1"})


class Harness(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sent: list[Message] = []
        self.transactions = Transactions(self.clock, timeout=10)
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def request(self, message: Message = REQUEST, **kwargs: Any) -> Deferred[Message]:
        return self.transactions.request(self.sent.append, message, **kwargs)

    def logged(self, text: str) -> bool:
        return any(text in formatEvent(event) for event in self.events)


class ReplyTests(Harness):
    def test_request_is_stamped_and_sent(self) -> None:
        self.request()
        [sent] = self.sent
        self.assertEqual(sent.id, MessageID.GetAuthRequest)
        self.assertNotEqual(sent.from_session, 0)
        self.assertEqual(sent.string_params, REQUEST.string_params)
        self.assertEqual(self.transactions.pending, 1)

    def test_reply_fires_the_deferred(self) -> None:
        d = self.request()
        reply = reply_to(self.sent[0], string_params={ParamKey.User: "root"}, sender="Cell_a")
        self.assertTrue(self.transactions.deliver(reply))
        result = self.successResultOf(d)
        self.assertEqual(result.string_params[ParamKey.User], "root")
        self.assertEqual(result.sender, "Cell_a")
        self.assertEqual(self.transactions.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failure_reply_is_a_cell_error(self) -> None:
        d = self.request()
        self.transactions.deliver(reply_to(self.sent[0], success=False, error="no such guest"))
        failure = self.failureResultOf(d, CellError)
        self.assertEqual(str(failure.value), "no such guest")
        self.assertEqual(failure.value.message.error, "no such guest")

    def test_tokens_are_unique_and_monotonic(self) -> None:
        for _ in range(5):
            self.request()
        tokens = [message.from_session for message in self.sent]
        self.assertEqual(tokens, sorted(set(tokens)))

    def test_replies_reach_their_own_transaction(self) -> None:
        first, second = self.request(), self.request()
        self.transactions.deliver(reply_to(self.sent[1], string_params={0: "second"}))
        self.assertNoResult(first)
        self.assertEqual(self.successResultOf(second).string_params[0], "second")

    def test_shrink_accepts_resize_response(self) -> None:
        d = self.request(Message(id=MessageID.ShrinkDiskRequest))
        self.transactions.deliver(reply_to(self.sent[0], id=MessageID.ResizeDiskResponse))
        self.assertEqual(self.successResultOf(d).id, MessageID.ResizeDiskResponse)

    def test_pool_ready_is_answered_by_cell_ready(self) -> None:
        d = self.request(Message(id=MessageID.ComputePoolReadyEvent))
        self.transactions.deliver(reply_to(self.sent[0], id=MessageID.ComputeCellReadyEvent))
        self.assertEqual(self.successResultOf(d).id, MessageID.ComputeCellReadyEvent)

    def test_one_way_messages_are_refused(self) -> None:
        self.assertRaises(ValueError, self.request, Message(id=MessageID.MigrateInstanceRequest))
        self.assertRaises(ValueError, self.request, Message(id=MessageID.GuestCreatedEvent))
        self.assertEqual(self.sent, [])
        self.assertEqual(self.transactions.pending, 0)

    def test_send_failure_fails_the_request_and_forgets_it(self) -> None:
        def broken(message: Message) -> None:
            raise ConnectionError("link closed")

        d = self.transactions.request(broken, REQUEST)
        self.failureResultOf(d, ConnectionError)
        self.assertEqual(self.transactions.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reply_delivered_while_sending(self) -> None:
        def loopback(message: Message) -> None:
            self.transactions.deliver(reply_to(message))

        d = self.transactions.request(loopback, REQUEST)
        self.assertEqual(self.successResultOf(d).id, MessageID.GetAuthResponse)

    def test_unsolicited_messages_are_not_routed(self) -> None:
        self.request()
        self.assertFalse(self.transactions.deliver(Message(id=MessageID.GuestStartedEvent)))
        self.assertEqual(self.transactions.pending, 1)

    def test_reply_from_the_wrong_peer_is_dropped(self) -> None:
        d = self.request(peer="Cell_a")
        impostor = reply_to(self.sent[0], sender="Cell_b")
        self.assertFalse(self.transactions.deliver(impostor))
        self.assertNoResult(d)
        self.assertTrue(self.logged("not 'Cell_a'"))
        self.assertTrue(self.transactions.deliver(reply_to(self.sent[0], sender="Cell_a")))
        self.successResultOf(d)

    def test_fail_peer(self) -> None:
        a, b = self.request(peer="Cell_a"), self.request(peer="Cell_b")
        self.assertEqual(self.transactions.fail_peer("Cell_a", ConnectionError("lost")), 1)
        self.failureResultOf(a, ConnectionError)
        self.assertNoResult(b)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class TimeoutTests(Harness):
    def test_times_out_after_the_domain_timeout(self) -> None:
        d = self.request()
        self.clock.advance(9.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        failure = self.failureResultOf(d, TransactionTimeout)
        self.assertEqual(failure.value.timeout, 10)
        self.assertEqual(failure.value.request, self.sent[0])
        self.assertIn("GetAuthRequest", str(failure.value))
        self.assertEqual(self.transactions.pending, 0)

    def test_timeouts_of_one_peer_are_logged_once_with_a_count(self) -> None:
        """A frozen Cell times out everything waiting for it: one line per peer, and the
        count when the minute ends (or when the owner stops)."""
        waiting = [self.request(peer="Cell_a") for _ in range(3)] + [self.request(peer="Cell_b")]
        self.clock.advance(10)
        for d in waiting:
            self.failureResultOf(d, TransactionTimeout)
        lines = [formatEvent(e) for e in self.events if "timed out" in formatEvent(e)]
        self.assertEqual(len(lines), 2)
        self.transactions.flush_log()
        self.assertTrue(self.logged("2 more timed-out requests from Cell_a"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_per_request_timeout(self) -> None:
        d = self.request(timeout=2.5)
        self.clock.advance(2.5)
        self.failureResultOf(d, TransactionTimeout)

    def test_bad_timeouts_are_refused(self) -> None:
        for bad in (0, -1, float("nan"), float("inf")):
            self.assertRaises(ValueError, Transactions, self.clock, bad)
            self.assertRaises(ValueError, self.request, timeout=bad)
        self.assertEqual(self.sent, [])

    def test_late_reply_is_dropped_and_logged(self) -> None:
        d = self.request()
        self.clock.advance(10)
        self.failureResultOf(d, TransactionTimeout)
        newer = self.request()
        late = reply_to(self.sent[0], sender="Cell_a")
        self.assertFalse(self.transactions.deliver(late))
        self.assertNoResult(newer)
        self.assertTrue(self.logged("late reply GetAuthResponse from 'Cell_a'"))
        self.assertTrue(self.logged("already ended"))

    def test_a_late_reply_goes_to_whoever_hears_of_them(self) -> None:
        heard: list[tuple[Message, Message]] = []
        self.transactions.late = lambda request, reply: heard.append((request, reply))
        d = self.request(peer="Cell_a")
        self.clock.advance(10)
        self.failureResultOf(d, TransactionTimeout)
        (request,) = self.sent
        progress = Message(id=MessageID.GuestUpdatedEvent, to_session=request.from_session,
                           sender="Cell_a")  # fmt: skip
        other = reply_to(request, sender="Cell_b")
        for dropped in (progress, other):
            self.assertFalse(self.transactions.deliver(dropped))
        self.assertEqual(heard, [])
        late = reply_to(request, sender="Cell_a")
        self.assertFalse(self.transactions.deliver(late))
        self.assertEqual(heard, [(request, late)])
        # Told once: a second copy is a reply to a transaction that ended.
        self.assertFalse(self.transactions.deliver(late))
        self.assertEqual(len(heard), 1)
        self.assertTrue(self.logged("already ended"))

    def test_only_the_latest_timeouts_are_remembered(self) -> None:
        heard: list[tuple[Message, Message]] = []
        self.transactions.late = lambda request, reply: heard.append((request, reply))
        waiting = [self.request() for _ in range(TIMED_OUT_KEPT + 1)]
        self.clock.advance(10)
        for d in waiting:
            self.failureResultOf(d, TransactionTimeout)
        oldest, newest = self.sent[0], self.sent[-1]
        self.transactions.deliver(reply_to(oldest))
        self.transactions.deliver(reply_to(newest))
        self.assertEqual([request for request, _ in heard], [newest])

    def test_reply_after_completion_is_dropped(self) -> None:
        d = self.request()
        self.transactions.deliver(reply_to(self.sent[0]))
        self.successResultOf(d)
        self.assertFalse(self.transactions.deliver(reply_to(self.sent[0])))

    def test_never_issued_token_is_dropped(self) -> None:
        self.assertFalse(self.transactions.deliver(Message(id=1, to_session=999)))
        self.assertTrue(self.logged("never issued"))
        warnings = [e for e in self.events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)


class CancellationTests(Harness):
    def test_cancel_forgets_the_token(self) -> None:
        d = self.request()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.transactions.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.transactions.deliver(reply_to(self.sent[0])))
        self.assertTrue(self.logged("already ended"))

    def test_cancel_after_reply_changes_nothing(self) -> None:
        d = self.request()
        self.transactions.deliver(reply_to(self.sent[0]))
        d.cancel()
        self.successResultOf(d)


class ProgressTests(Harness):
    def test_progress_events_reach_the_callback(self) -> None:
        progress: list[Message] = []
        request = Message(id=MessageID.CreateGuestRequest)
        d = self.request(request, on_progress=progress.append)
        for percent in (10, 50):
            event = reply_to(
                self.sent[0],
                id=MessageID.GuestUpdatedEvent,
                uint_params={ParamKey.Progress: percent},
            )
            self.assertTrue(self.transactions.deliver(event))
        self.assertEqual([m.uint_params[ParamKey.Progress] for m in progress], [10, 50])
        self.assertNoResult(d)
        self.transactions.deliver(reply_to(self.sent[0]))
        self.assertEqual(self.successResultOf(d).id, MessageID.CreateGuestResponse)

    def test_progress_does_not_extend_the_timeout_by_default(self) -> None:
        d = self.request(on_progress=lambda m: None)
        self.clock.advance(9)
        self.transactions.deliver(reply_to(self.sent[0], id=MessageID.GuestUpdatedEvent))
        self.clock.advance(1)
        self.failureResultOf(d, TransactionTimeout)

    def test_inactivity_timeout_for_disk_image_upload(self) -> None:
        """§5.12: progress continues after the response; give up after a silent timeout."""
        updates: list[Message] = []

        def finished(message: Message) -> bool:
            if message.id == MessageID.CreateDiskImageResponse:
                return not message.success
            return message.id == MessageID.DiskImageUpdatedEvent and (
                not message.success or message.bool_params.get(ParamKey.Enable, False)
            )

        d = self.request(
            Message(id=MessageID.CreateDiskImageRequest),
            on_progress=updates.append,
            is_reply=finished,
            restart_on_progress=True,
        )
        token_request = self.sent[0]
        self.transactions.deliver(reply_to(token_request))
        for percent in (30, 60):
            self.clock.advance(9)
            self.transactions.deliver(
                reply_to(
                    token_request,
                    id=MessageID.DiskImageUpdatedEvent,
                    uint_params={ParamKey.Progress: percent},
                    bool_params={ParamKey.Enable: False},
                )
            )
        self.clock.advance(9)
        self.assertNoResult(d)
        done = reply_to(
            token_request,
            id=MessageID.DiskImageUpdatedEvent,
            bool_params={ParamKey.Enable: True},
            uint_params={ParamKey.Size: 1024},
        )
        self.transactions.deliver(done)
        self.assertEqual(self.successResultOf(d), done)
        self.assertEqual(len(updates), 3)

        again = self.request(
            Message(id=MessageID.CreateDiskImageRequest),
            is_reply=finished,
            restart_on_progress=True,
        )
        self.clock.advance(10)
        self.failureResultOf(again, TransactionTimeout)

    def test_a_failing_progress_callback_is_logged_not_raised(self) -> None:
        def broken(message: Message) -> None:
            raise RuntimeError("boom")

        d = self.request(on_progress=broken)
        event = reply_to(self.sent[0], id=MessageID.GuestUpdatedEvent)
        self.assertTrue(self.transactions.deliver(event))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.transactions.deliver(reply_to(self.sent[0]))
        self.successResultOf(d)


class TokenTests(SynchronousTestCase):
    def test_wrap_skips_zero(self) -> None:
        sent: list[Message] = []
        transactions = Transactions(Clock(), 10, first_token=TOKEN_MAX - 1)
        for _ in range(3):
            transactions.request(sent.append, REQUEST)
        self.assertEqual([m.from_session for m in sent], [TOKEN_MAX - 1, TOKEN_MAX, 1])

    def test_wrap_never_hands_out_a_pending_token(self) -> None:
        clock = Clock()
        sent: list[Message] = []
        transactions = Transactions(clock, 10, first_token=TOKEN_MAX)
        transactions.request(sent.append, REQUEST)  # TOKEN_MAX, then wrap to 1
        transactions.request(sent.append, REQUEST)  # 1
        # White box: rewind the counter as if a whole cycle of requests had passed while
        # token 1 is still pending; it must be skipped, not reused.
        transactions._next_token = TOKEN_MAX
        transactions.request(sent.append, REQUEST)
        self.assertEqual([m.from_session for m in sent], [TOKEN_MAX, 1, 2])

    def test_first_token_is_checked(self) -> None:
        self.assertRaises(ValueError, Transactions, Clock(), 10, first_token=0)
        self.assertRaises(ValueError, Transactions, Clock(), 10, first_token=2**32)


class ReplyToTests(SynchronousTestCase):
    def test_reply_to_addresses_the_requester(self) -> None:
        request = Message(id=MessageID.GetAuthRequest, from_session=42, transaction=7)
        reply = reply_to(request, string_params={ParamKey.User: "root"}, from_session=3)
        self.assertEqual(reply.id, MessageID.GetAuthResponse)
        self.assertEqual(reply.to_session, 42)
        self.assertEqual(reply.from_session, 3)
        self.assertTrue(reply.success)
        self.assertEqual(reply.transaction, 0)

    def test_failure_reply(self) -> None:
        reply = reply_to(
            Message(id=MessageID.StartInstanceRequest, from_session=1), success=False, error="x"
        )
        self.assertEqual(
            (reply.id, reply.success, reply.error), (MessageID.StartInstanceResponse, False, "x")
        )

    def test_reply_ids(self) -> None:
        self.assertEqual(reply_ids(MessageID.GetAuthRequest), {MessageID.GetAuthResponse})
        self.assertEqual(reply_ids(MessageID.MigrateInstanceRequest), frozenset())
        self.assertEqual(reply_ids(MessageID.CellStatusReportEvent), frozenset())
