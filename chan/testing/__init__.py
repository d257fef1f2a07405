"""chan.testing: one conformance suite that every transport must pass.

In the manner of trio's ``trio.testing.check_*_stream``: each ``check_*`` function takes
a *pair maker* (a callable returning a connected ``(Sender, Receiver)`` on a fresh
channel) and raises ``AssertionError`` (or the chan error that broke it) when the
transport behind it does not behave as :mod:`chan` promises.  The ``acheck_*`` twins do
the same for :mod:`chan.aio` with an async pair maker.

Pair makers for the built-in transports come from links::

    from chan import testing

    with testing.open_link("tcp") as link:          # "pipe", "tcp", "ipc", "inproc"
        testing.check_transport(link.pair)          # every generic check

    async with testing.open_alink("ipc") as link:   # the asyncio front end
        await testing.acheck_transport(link.pair)

A session link is one listener and one session connected to it; ``link.pair()`` opens
a channel on the session (the Sender, on the connecting side) and accepts it on the
listener (the Receiver).  Closing the link closes the session, then the listener, and
removes what it created (an ipc:// socket file in its own temporary directory).

:data:`CHECKS` / :data:`ACHECKS` map names to the checks that take one pair maker, so a
test suite can parametrize over checks and transports.  Some checks need more:
:func:`check_forwarding` and :func:`check_forwarding_errors` take two pair makers
(channel ends handed on to a third party: A to B over one, B to C over the other), and
:func:`check_message_too_large` a pair maker of a session link made with a small
``Settings.max_message``.  The combinators :func:`sent_sender_pair` and
:func:`sent_receiver_pair` turn a pair maker into one whose Sender (or Receiver) has
itself travelled in a message, so every check also runs over nested ends.

Every wait in a check is bounded (:data:`WAIT` seconds): a broken transport fails a
check with :class:`chan.Timeout`, it never hangs it.

The package: ``links`` (transports, endpoints, links, nested-end combinators);
``checks`` (the blocking checks of CHECKS) and ``achecks`` (their asyncio twins, line
for line); ``extra`` (the checks that need more than one pair maker, both front ends);
``_cases`` (what the twins send and expect), ``_steps`` (bounded sends, drains and
reads) and ``_util`` (wait bounds, values, assertions).
"""

from ._util import SHORT, VALUES, WAIT, CodedError, assert_same, raises
from .achecks import (ACHECKS, acheck_close, acheck_close_with_error,
                      acheck_closed_channel_error, acheck_deep_nesting, acheck_flow_control,
                      acheck_iteration, acheck_not_msgpack, acheck_ordering,
                      acheck_ordering_per_channel, acheck_receiver_close,
                      acheck_receiver_in_message, acheck_recv_timeout, acheck_reply_channel,
                      acheck_same_end_twice, acheck_sent_away,
                      acheck_sent_end_close_with_error, acheck_stream_bulk,
                      acheck_stream_in_message, acheck_transport, acheck_tuple_as_list,
                      acheck_values)
from .checks import (CHECKS, check_close, check_close_with_error, check_closed_channel_error,
                     check_deep_nesting, check_flow_control, check_iteration,
                     check_not_msgpack, check_ordering, check_ordering_per_channel,
                     check_receiver_close, check_receiver_in_message, check_recv_timeout,
                     check_reply_channel, check_same_end_twice, check_sent_away,
                     check_sent_end_close_with_error, check_stream_bulk,
                     check_stream_in_message, check_transport, check_tuple_as_list,
                     check_values)
from .extra import (acheck_forwarding, acheck_forwarding_errors, acheck_message_too_large,
                    check_forwarding, check_forwarding_errors, check_message_too_large)
from .links import (SESSION_TRANSPORTS, TRANSPORTS, AsyncLink, AsyncPairMaker, Link,
                    PairMaker, asent_receiver_pair, asent_sender_pair, endpoint_for,
                    open_alink, open_link, sent_receiver_pair, sent_sender_pair)

__all__ = [
    "ACHECKS",
    "AsyncLink",
    "AsyncPairMaker",
    "CHECKS",
    "CodedError",
    "Link",
    "PairMaker",
    "SESSION_TRANSPORTS",
    "SHORT",
    "TRANSPORTS",
    "VALUES",
    "WAIT",
    "acheck_close",
    "acheck_close_with_error",
    "acheck_closed_channel_error",
    "acheck_deep_nesting",
    "acheck_flow_control",
    "acheck_forwarding",
    "acheck_forwarding_errors",
    "acheck_iteration",
    "acheck_message_too_large",
    "acheck_not_msgpack",
    "acheck_ordering",
    "acheck_ordering_per_channel",
    "acheck_receiver_close",
    "acheck_receiver_in_message",
    "acheck_recv_timeout",
    "acheck_reply_channel",
    "acheck_same_end_twice",
    "acheck_sent_away",
    "acheck_sent_end_close_with_error",
    "acheck_stream_bulk",
    "acheck_stream_in_message",
    "acheck_transport",
    "acheck_tuple_as_list",
    "acheck_values",
    "asent_receiver_pair",
    "asent_sender_pair",
    "assert_same",
    "check_close",
    "check_close_with_error",
    "check_closed_channel_error",
    "check_deep_nesting",
    "check_flow_control",
    "check_forwarding",
    "check_forwarding_errors",
    "check_iteration",
    "check_message_too_large",
    "check_not_msgpack",
    "check_ordering",
    "check_ordering_per_channel",
    "check_receiver_close",
    "check_receiver_in_message",
    "check_recv_timeout",
    "check_reply_channel",
    "check_same_end_twice",
    "check_sent_away",
    "check_sent_end_close_with_error",
    "check_stream_bulk",
    "check_stream_in_message",
    "check_transport",
    "check_tuple_as_list",
    "check_values",
    "endpoint_for",
    "open_alink",
    "open_link",
    "raises",
    "sent_receiver_pair",
    "sent_sender_pair",
]
