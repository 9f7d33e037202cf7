"""Breaks injected for the IntegrationMonitor's rules (see mutations.py).

Each bus form the rules must see has at least one mutation on circus, the corpus that
is a multi-component application on a ZeroMQ bus: a raw ``send_multipart`` or
``send_string`` to a topic nobody subscribes, Enum-member and class-constant topics,
a wrapper called with a literal, a catch-all recorder beside an orphan, a renamed
subscription, a Redis list nobody pops, and celery and the standard library add
queues nobody drains (one in a ``threading.Thread`` subclass, a base outside the tree).
"""

from __future__ import annotations

from mutations import Edit, Expect, Mutation

from kloros_tasks import names

INT = names.INTEGRATION

_PUB_FN = "\n\ndef {name}(sock):\n    {body}\n"

INTEGRATION_MUTATIONS: list[Mutation] = [
    # --- orphaned_channel: publishers -------------------------------------------------
    Mutation("circus-event-topic-misspelt", "circus", INT,
             (Edit("replace", "circus/watcher.py",
                   old="(\"watcher.%s.%s\" % (name, topic)).encode('utf8')",
                   new="b'watchers.event'"),),
             Expect("orphaned_channel", owner="circus/watcher.py", text="'watchers.event'"),
             why="send_multipart first frame, a literal nobody subscribes to"),
    Mutation("circus-send-string-orphan", "circus", INT,
             (Edit("append", "circus/arbiter.py", text=_PUB_FN.format(
                 name="announce_ready", body="sock.send_string('arbiter.ready now')")),),
             Expect("orphaned_channel", owner="circus/arbiter.py", text="'arbiter.ready'"),
             why="send_string: the first word is the topic"),
    Mutation("circus-enum-member-topic", "circus", INT,
             (Edit("create", "circus/signals.py",
                   text="import enum\n\n\nclass Signal(enum.Enum):\n"
                        "    EMERGENCY = 'emergency.stop'\n"),
              Edit("append", "circus/arbiter.py",
                   text="\n\nfrom circus.signals import Signal  # noqa\n" + _PUB_FN.format(
                       name="emergency", body="sock.send_multipart("
                       "[Signal.EMERGENCY.value.encode(), b'{}'])"))),
             Expect("orphaned_channel", owner="circus/arbiter.py", text="'emergency.stop'"),
             why="an Enum member of another module, followed through the index"),
    Mutation("circus-class-constant-topic", "circus", INT,
             (Edit("create", "circus/topics.py",
                   text="class Topics:\n    RELOADED = 'config.reloaded'\n"),
              Edit("append", "circus/controller.py",
                   text="\n\nfrom circus.topics import Topics  # noqa\n" + _PUB_FN.format(
                       name="reloaded", body="sock.send_multipart([Topics.RELOADED, b''])"))),
             Expect("orphaned_channel", owner="circus/controller.py",
                    text="'config.reloaded'"),
             why="a class constant of another module"),
    Mutation("circus-wrapper-call-site", "circus", INT,
             (Edit("create", "circus/bus.py",
                   text="def send_event(sock, topic, data):\n"
                        "    sock.send_multipart([topic.encode('utf8'), data])\n"),
              Edit("append", "circus/arbiter.py",
                   text="\n\nfrom circus.bus import send_event  # noqa\n" + _PUB_FN.format(
                       name="reaped", body="send_event(sock, 'arbiter.reaped', b'{}')"))),
             Expect("orphaned_channel", owner="circus/arbiter.py", text="'arbiter.reaped'"),
             why="a wrapper passing its parameter through; the call site with a literal"),
    Mutation("circus-orphan-beside-catch-all", "circus", INT,
             (Edit("create", "circus/history.py",
                   text="import zmq\n\n\ndef record(ctx, endpoint):\n"
                        "    sock = ctx.socket(zmq.SUB)\n"
                        "    sock.setsockopt(zmq.SUBSCRIBE, b'')\n"
                        "    sock.connect(endpoint)\n    return sock\n"),
              Edit("append", "circus/arbiter.py", text=_PUB_FN.format(
                  name="announce_ready", body="sock.send_multipart([b'arbiter.ready', b''])"))),
             Expect("orphaned_channel", owner="circus/arbiter.py", text="catch-all"),
             why="a recorder subscribed to everything is named, never a consumer"),
    # --- orphaned_channel: subscribers ------------------------------------------------
    Mutation("circus-plugin-subscription-renamed", "circus", INT,
             (Edit("replace", "circus/plugins/__init__.py", old="zmq.SUBSCRIBE, b'watcher.'",
                   new="zmq.SUBSCRIBE, b'watchers.'"),),
             Expect("orphaned_channel", owner="circus/plugins/__init__.py",
                    text="'watchers.'"),
             why="setsockopt(zmq.SUBSCRIBE, b'...') to a prefix nobody publishes"),
    Mutation("circus-streamer-subscription-renamed", "circus", INT,
             (Edit("replace", "circus/stats/streamer.py", old="self.topic = b'watcher.'",
                   new="self.topic = b'watcher_'"),),
             Expect("orphaned_channel", owner="circus/stats/streamer.py", text="'watcher_'"),
             why="a self.topic constant given to setsockopt"),
    Mutation("celery-redis-subscribe-orphan", "celery", INT,
             (Edit("append", "celery/events/receiver.py",
                   text="\n\ndef listen_for_shutdown(redis):\n"
                        "    pubsub = redis.pubsub()\n"
                        "    pubsub.psubscribe('celery.shutdown.*')\n    return pubsub\n"),),
             Expect("orphaned_channel", owner="celery/events/receiver.py",
                    text="'celery.shutdown.'"),
             why="a Redis psubscribe pattern nobody publishes to"),
    # --- orphaned_queue ---------------------------------------------------------------
    Mutation("celery-thread-queue-never-drained", "celery", INT,
             (Edit("append", "celery/utils/threads.py",
                   text="\n\nclass Flusher(threading.Thread):\n"
                        "    def __init__(self):\n        super().__init__()\n"
                        "        self.jobs = queue.Queue()\n\n"
                        "    def submit(self, job):\n        self.jobs.put(job)\n\n"
                        "    def run(self):\n        pass\n"),
              Edit("replace", "celery/utils/threads.py", old="import threading",
                   new="import queue\nimport threading")),
             Expect("orphaned_queue", owner="celery/utils/threads.py", text="Flusher.jobs"),
             why="a queue in a Thread subclass whose base is outside the tree"),
    Mutation("circus-redis-list-never-popped", "circus", INT,
             (Edit("append", "circus/plugins/redis_observer.py",
                   text="\n\ndef push_event(redis, event):\n"
                        "    redis.lpush('circus:events', event)\n"),),
             Expect("orphaned_queue", owner="circus/plugins/redis_observer.py",
                    text="'circus:events'"),
             why="a Redis list pushed and never popped"),
    Mutation("stdlib-thread-pool-queue-never-read", "stdlib", INT,
             (Edit("replace", "concurrent/futures/thread.py",
                   old="work_item = self._work_queue.get_nowait()",
                   new="work_item = None"),
              Edit("replace", "concurrent/futures/thread.py",
                   old="work_item = self._work_queue.get_nowait()", new="work_item = None"),
              Edit("replace", "concurrent/futures/thread.py",
                   old="        def weakref_cb(_, q=self._work_queue):",
                   new="        def weakref_cb(_, q=None):"),
              Edit("replace", "concurrent/futures/thread.py",
                   old="                                       self._work_queue,",
                   new="                                       None,"),
              Edit("replace", "concurrent/futures/thread.py",
                   old="            _threads_queues[t] = self._work_queue",
                   new="            _threads_queues[t] = None")),
             Expect("orphaned_queue", owner="concurrent/futures/thread.py",
                    text="_work_queue"),
             why="every reader of a SimpleQueue removed, the puts kept"),
    Mutation("celery-outbound-buffer-never-flushed", "celery", INT,
             (Edit("append", "celery/utils/timer2.py",
                   text="\n\nclass Batcher:\n    def __init__(self):\n"
                        "        self.outbox = collections.deque()\n\n"
                        "    def add(self, item):\n        self.outbox.append(item)\n"),
              Edit("replace", "celery/utils/timer2.py", old="import os\n",
                   new="import collections\nimport os\n")),
             Expect("orphaned_queue", owner="celery/utils/timer2.py", text="Batcher.outbox"),
             why="a deque appended and never popped"),
    # --- missing_wiring ---------------------------------------------------------------
    Mutation("circus-controller-client-unwired", "circus", INT,
             (Edit("replace", "circus/circusctl.py", old="        self.client = client\n",
                   new=""),),
             Expect("missing_wiring", owner="circus/circusctl.py", text="client"),
             why="an __init__ assignment removed"),
    Mutation("circus-streamer-delay-unwired", "circus", INT,
             (Edit("replace", "circus/stats/streamer.py", old="        self.delay = delay\n",
                   new=""),),
             Expect("missing_wiring", owner="circus/stats/streamer.py", text="delay"),
             why="an __init__ assignment removed"),
    Mutation("django-paginator-orphans-unwired", "django", INT,
             (Edit("replace", "django/core/paginator.py",
                   old="        self.orphans = int(orphans)\n", new=""),),
             Expect("missing_wiring", owner="django/core/paginator.py", text="orphans"),
             why="an __init__ assignment removed in a package-root scan"),
    # --- broken_import ----------------------------------------------------------------
    Mutation("circus-to-bytes-renamed", "circus", INT,
             (Edit("replace", "circus/util.py", old="def to_bytes(", new="def as_bytes("),),
             Expect("broken_import", text="circus.util.to_bytes"),
             why="a function others import renamed"),
    Mutation("django-capfirst-renamed", "django", INT,
             (Edit("replace", "django/utils/text.py", old="def capfirst(",
                   new="def cap_first("),),
             Expect("broken_import", text="django.utils.text.capfirst"),
             why="a function others import renamed, in a package-root scan"),
    Mutation("celery-module-deleted", "celery", INT,
             (Edit("delete", "celery/utils/timer2.py"),),
             Expect("broken_import", text="celery.utils.timer2"),
             why="a module others import deleted"),
]
