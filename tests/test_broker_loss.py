"""The broker connection of a worker, lost with a task in flight (kombu, private Redis)."""

from __future__ import annotations

from kombu import Connection, Producer, Queue

import kloros_tasks.celery_app  # noqa: F401 - installs the guard under test
from kloros_tasks.connections import broker_url


def test_a_connection_closed_twice_with_a_task_in_flight_keeps_the_task(redis_url, r):
    # Across a Redis restart the consumer may close a connection whose transport a
    # first failure closed already; the channel then puts its unacknowledged task back
    # through a client built from the closed transport.  That was an AttributeError the
    # consumer does not ignore, and the worker died; as a connection error it is
    # ignored, and the task waits in ``unacked`` to be delivered again.
    connection = Connection(broker_url(redis_url))
    channel = connection.default_channel
    queue = Queue("lost", routing_key="lost")
    Producer(channel).publish({"task": 1}, routing_key="lost", declare=[queue],
                              serializer="json")
    channel.basic_qos(0, 1, False)
    assert channel.basic_get("lost", no_ack=False) is not None
    assert len(channel.qos._delivered) == 1
    connection._do_close_transport()  # what the first failure's close leaves
    connection.release()  # raised AttributeError ('hostname') before the guard
    assert r.hlen("unacked") == 1 and r.llen("lost") == 0
