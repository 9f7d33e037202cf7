"""IntegrationMonitor on message buses and queues as real trees write them: raw ZeroMQ
sends, Enum and class-constant topics, wrappers, catch-all recorders, queue types,
Redis lists, and questions in test code.

Each case is the smallest real-shaped example of a form; a question is named by its
owner and hypothesis, as in test_integration_detector.
"""

from __future__ import annotations

import json

import pytest
from test_integration_detector import DETECTOR, change, found, index_of, questions_of

from kloros_tasks.detectors.layout import Layout, using
from kloros_tasks.state.index import MemoryIndex


# --- publishers it used to miss -------------------------------------------------------------
@pytest.mark.parametrize("publisher", [
    "sock.send_multipart([b'chem.alert', payload])",
    "sock.send_multipart([('chem.alert').encode('utf8'), json.dumps(msg)])",
    "msg = [b'chem.alert', body]\nsock.send_multipart(msg)",
    "sock.send_string('chem.alert ' + json.dumps(msg))",
    "sock.send_string(f'chem.alert {body}')",
])
def test_raw_zeromq_sends_to_a_topic_nobody_subscribes_are_orphaned(publisher):
    assert found({"pub.py": publisher + "\n"}) == {"pub.py ORPHANED_CHANNEL: publish 'chem.alert'"}
    sub = "sock.setsockopt(zmq.SUBSCRIBE, b'chem.')\n"
    assert found({"pub.py": publisher + "\n", "sub.py": sub}) == set()


def test_a_built_first_frame_covers_its_prefix_subscribers():
    # circus: watcher.notify_event sends ("watcher.%s.%s" % (name, topic)).encode()
    pub = ("def notify(name, topic, msg):\n"
           "    frames = [('watcher.%s.%s' % (name, topic)).encode('utf8'), msg]\n"
           "    sock.send_multipart(frames)\n")
    sub = "sock.setsockopt(zmq.SUBSCRIBE, b'watcher.')\n"
    assert found({"pub.py": pub, "sub.py": sub}) == set()


def test_frames_sent_on_a_socket_that_is_not_pub_are_not_topics():
    dealer = "sock = ctx.socket(zmq.DEALER)\nsock.send_multipart([b'ping', b''])\n"
    assert found({"client.py": dealer}) == set()


ENUM = "import enum\nclass Signal(str, enum.Enum):\n    EMERGENCY = 'chem.emergency'\n"


@pytest.mark.parametrize("use", ["bus.publish(Signal.EMERGENCY.value, 1)",
                                 "bus.publish(Signal.EMERGENCY, 1)"])
def test_an_enum_member_topic_from_another_module_is_followed_through_the_index(use):
    pub = f"from signals import Signal\n{use}\n"
    assert found({"signals.py": ENUM, "pub.py": pub}) == \
        {"pub.py ORPHANED_CHANNEL: publish 'chem.emergency'"}
    assert found({"signals.py": ENUM, "pub.py": pub,
                  "sub.py": "bus.subscribe('chem.')\n"}) == set()
    by_name = "from signals import Signal\nbus.subscribe(Signal.EMERGENCY)\n"
    assert found({"signals.py": ENUM, "pub.py": pub, "sub.py": by_name}) == set()


def test_a_class_constant_topic_of_the_same_file_is_a_literal():
    text = "class Topics:\n    ALERT = 'chem.alert'\n\nbus.publish(Topics.ALERT, 1)\n"
    assert found({"pub.py": text}) == {"pub.py ORPHANED_CHANNEL: publish 'chem.alert'"}


def test_a_literal_subscription_is_fed_by_a_class_constant_publisher():
    topics = "class Topics:\n    ALERT = 'chem.alert'\n"
    pub = "from topics import Topics\nbus.publish(Topics.ALERT, 1)\n"
    assert found({"topics.py": topics, "pub.py": pub,
                  "sub.py": "bus.subscribe('chem.alert')\n"}) == set()


def test_a_constant_changed_in_its_module_re_judges_the_publishers():
    index = index_of({"topics.py": "class Topics:\n    ALERT = 'chem.alert'\n",
                      "pub.py": "from topics import Topics\nbus.publish(Topics.ALERT, 1)\n",
                      "sub.py": "bus.subscribe('chem.')\n"})
    assert questions_of(index) == []
    assert "pub.py" in change(index, "topics.py", "class Topics:\n    ALERT = 'jobs.alert'\n")
    assert sorted(q.hypothesis for q in questions_of(index)) == \
        ["ORPHANED_CHANNEL: publish 'jobs.alert'", "ORPHANED_CHANNEL: subscribe 'chem.'"]


WRAPPER = """
class Bus:
    def __init__(self, sock):
        self.sock = sock
    def send_event(self, topic, data):
        self.sock.send_multipart([topic.encode(), data])
"""


def test_a_call_through_an_in_tree_wrapper_with_a_literal_is_a_publisher():
    caller = "from bus import Bus\nBus(s).send_event('jobs.done', b'{}')\n"
    assert found({"bus.py": WRAPPER, "app.py": caller}) == \
        {"app.py ORPHANED_CHANNEL: publish 'jobs.done'"}
    assert found({"bus.py": WRAPPER, "app.py": caller,
                  "sub.py": "bus.subscribe('jobs.')\n"}) == set()
    # and it feeds a subscription
    assert found({"bus.py": WRAPPER, "app.py": caller,
                  "sub.py": "bus.subscribe('jobs.done')\n"}) == set()


def test_a_wrapper_defined_after_its_callers_opens_their_questions():
    index = index_of({"app.py": "bus.send_event(topic='jobs.done', data=1)\n"})
    assert questions_of(index) == []
    assert "app.py" in change(index, "bus.py", WRAPPER)
    assert [(q.owner, q.hypothesis) for q in questions_of(index)] == \
        [("app.py", "ORPHANED_CHANNEL: publish 'jobs.done'")]


# --- subscribers it used to miss ------------------------------------------------------------
@pytest.mark.parametrize("subscriber", [
    "sock.setsockopt(zmq.SUBSCRIBE, b'chem.alert')",
    "sock.setsockopt_string(zmq.SUBSCRIBE, 'chem.')",
    "pubsub.subscribe(**{'chem.alert': handler})",
    "pubsub.psubscribe('chem.*')",
    "pubsub.subscribe(chem_alert=handler)",
    "class S:\n    def __init__(self, sock):\n        self.topic = b'chem.'\n"
    "        self.sock = sock\n"
    "    def start(self):\n        self.sock.setsockopt(zmq.SUBSCRIBE, self.topic)",
])
def test_subscriber_forms_consume_a_publication(subscriber):
    topic = "chem_alert" if "chem_alert" in subscriber else "chem.alert"
    pub = f"bus.publish('{topic}', 1)\n"
    assert found({"pub.py": pub, "sub.py": subscriber + "\n"}) == set()


def test_the_constructor_of_an_in_tree_subscriber_class_subscribes():
    sub_class = ("class SomeSub:\n    def __init__(self, topic, callback):\n"
                 "        self.sock = zmq.Context.instance().socket(zmq.SUB)\n"
                 "        self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())\n")
    user = "from subs import SomeSub\nSomeSub(topic='chem.alert', callback=print)\n"
    pub = "bus.publish('chem.alert', 1)\n"
    assert found({"subs.py": sub_class, "user.py": user, "pub.py": pub}) == set()
    assert found({"subs.py": sub_class, "user.py": user}) == \
        {"user.py ORPHANED_CHANNEL: subscribe 'chem.alert'"}


# --- the catch-all --------------------------------------------------------------------------
@pytest.mark.parametrize("recorder", [
    "sock.setsockopt(zmq.SUBSCRIBE, b'')",
    "sock.setsockopt_string(zmq.SUBSCRIBE, '')",
    "r.psubscribe('*')",
])
def test_a_catch_all_subscriber_is_named_but_never_counts_as_a_consumer(recorder):
    files = {"pub.py": "bus.publish('chem.alert', 1)\n", "history_daemon.py": recorder + "\n"}
    questions = questions_of(index_of(files))
    assert [(q.owner, q.hypothesis) for q in questions] == \
        [("pub.py", "ORPHANED_CHANNEL: publish 'chem.alert'")]
    assert any(e.startswith("history_daemon.py subscribes to every topic")
               for e in questions[0].evidence)
    assert "catch-all of history_daemon.py" in questions[0].question


def test_a_catch_all_arriving_or_leaving_re_judges_publishers():
    index = index_of({"pub.py": "bus.publish('chem.alert', 1)\n"})
    assert "pub.py" in change(index, "rec.py", "sock.setsockopt(zmq.SUBSCRIBE, b'')\n")
    assert "pub.py" in change(index, "rec2.py", "sock.setsockopt(zmq.SUBSCRIBE, b'')\n")
    assert "pub.py" in change(index, "rec.py", None)


# --- queues ---------------------------------------------------------------------------------
def test_a_write_only_list_that_is_not_named_as_a_queue_is_not_a_queue():
    text = ("class Recorder:\n    def __init__(self):\n        self.calls = []\n"
            "    def record(self, x):\n        self.calls.append(x)\n")
    assert found({"tests/fakes.py": text}) == set()
    assert found({"app.py": text}) == set()


@pytest.mark.parametrize("container, fill", [
    ("queue.Queue()", "put"), ("asyncio.Queue()", "put_nowait"),
    ("multiprocessing.Queue()", "put"), ("collections.deque()", "append")])
def test_queue_types_are_queues_whatever_their_name(container, fill):
    text = (f"import queue, asyncio, multiprocessing, collections\nclass W:\n"
            f"    def __init__(self):\n        self.items = {container}\n"
            f"    def add(self, x):\n        self.items.{fill}(x)\n")
    assert found({"w.py": text}) == {"w.py ORPHANED_QUEUE: W.items"}


def test_a_queue_in_a_thread_subclass_whose_base_is_outside_the_tree_is_judged():
    text = ("import threading, queue\nclass Worker(threading.Thread):\n"
            "    def __init__(self):\n        super().__init__()\n"
            "        self.jobs = queue.Queue()\n"
            "    def submit(self, job):\n        self.jobs.put(job)\n")
    assert found({"w.py": text}) == {"w.py ORPHANED_QUEUE: Worker.jobs"}
    drained = text + "    def run(self):\n        while True:\n            self.jobs.get()\n"
    assert found({"w.py": drained}) == set()


def test_a_redis_list_pushed_and_never_popped_is_an_orphaned_queue():
    producer = "r.lpush('jobs:new', payload)\n"
    assert found({"p.py": producer}) == {"p.py ORPHANED_QUEUE: redis list 'jobs:new'"}
    assert found({"p.py": producer, "c.py": "r.brpop(['jobs:new'], timeout=5)\n"}) == set()
    assert found({"p.py": producer, "c.py": "r.rpop(f'jobs:{kind}')\n"}) == set()


# --- test code ------------------------------------------------------------------------------
def test_questions_in_test_code_are_low_and_say_so():
    files = {"django/__init__.py": "", "django/db/__init__.py": "",
             "tests/admin_scripts/broken_app/models.py": "from django.db import modelz\n"}
    [question] = questions_of(index_of(files))
    assert question.rule == "broken_import" and question.severity == "low"
    assert question.question.startswith("In test or example code") and question.extra["test_code"]
    outside = {**files, "app.py": "from django.db import modelz\n"}
    severities = {q.owner: q.severity for q in questions_of(index_of(outside))}
    assert severities["app.py"] == "high"


def test_facts_of_every_new_form_survive_json():
    facts = DETECTOR.extract("a.py", ENUM + WRAPPER + "r.lpush('k', 1)\n")
    again = type(facts).from_json(json.loads(json.dumps(facts.to_json())))
    assert again.data == facts.data and again.relations == facts.relations
    assert facts.data["lpush"] == {"k": [10]}


# --- real shapes that are not bus topics ----------------------------------------------------
def test_events_addressed_to_network_peers_only_cover():
    # python-socketio's admin server: emits to a browser client, listens in a namespace
    server = ("sio.emit('config', {'a': 1}, to=sid, namespace='/admin')\n"
              "sio.on('emit', admin_emit, namespace='/admin')\n")
    client = "admin_client.emit('emit', ('/', sid, 'foo'))\n"
    assert found({"admin.py": server, "client.py": client}) == set()


def test_event_emitter_listeners_cover_but_are_not_judged():
    # engineio fires 'message' from outside the tree
    assert found({"server.py": "self.eio.on('message', self._handle_eio_message)\n"}) == set()
    pub = "emitter.emit('ready')\n"
    assert found({"pub.py": pub, "sub.py": "emitter.once('ready', go)\n"}) == set()


@pytest.mark.parametrize("subscription, publisher", [
    ("client.subscribe('requests/math/#')",
     "topic = 'requests/math/' + func\nclient.publish(topic, payload)"),
    ("client.subscribe('sensors/+/temp')", "client.publish('sensors/kitchen/temp', 21)"),
])
def test_mqtt_wildcards_subscribe_to_their_literal_head(subscription, publisher):
    assert found({"sub.py": subscription + "\n", "pub.py": publisher + "\n"}) == set()


def test_broker_system_topics_are_published_by_the_broker():
    assert found({"logger.py": "client.subscribe('$SYS/#')\n"}) == set()


def test_topics_of_test_and_example_code_cover_but_are_not_judged():
    assert found({"examples/client_pub.py": "client.publish('tuple', 'bar')\n",
                  "tests/test_client.py": "client.subscribe('qos0/test')\n"}) == set()
    assert found({"examples/sub.py": "client.subscribe('jobs.')\n",
                  "app.py": "client.publish('jobs.new', 1)\n"}) == set()


def test_a_private_name_written_on_another_object_in_the_class_is_mangled():
    # python-socketio's admin: Socket.__handler = ... in InstrumentedServer wires
    # self.__handler (both _InstrumentedServer__handler)
    text = ("class InstrumentedServer:\n    def __init__(self):\n        self.sio = None\n"
            "        Socket.__handler = Socket._handler\n"
            "    def _handler(self, ws):\n        return self.__handler(ws)\n")
    assert found({"admin.py": text}) == set()


# --- imports across import roots ------------------------------------------------------------
def tree_layout(files: dict[str, str]) -> Layout:
    """The real layout of ``files``: a directory is a package when it has __init__.py."""
    packages = {p.rpartition("/")[0] for p in files if p.endswith("__init__.py")}
    return Layout(lambda d: d in packages)


@pytest.mark.parametrize("shadow, importer", [
    # black: a test data file named like the standard library module
    ("tests/data/cases/collections.py", "src/black/trans.py"),
    # celery: an example package named like a third-party distribution
    ("examples/pydantic/__init__.py", "t/integration/tasks.py"),
])
def test_a_module_of_another_import_root_is_not_what_an_import_finds(shadow, importer):
    name = "collections" if "collections" in shadow else "pydantic"
    files = {shadow: "x = 1\n", importer: f"from {name} import Something\n",
             "src/black/__init__.py": "", "src/black/mode.py": ""}
    with using(tree_layout(files)):
        index = MemoryIndex()
        for path, text in files.items():
            index.update(path, DETECTOR.extract(path, text))
        assert [q for p in files for q in DETECTOR.evaluate(p, index)] == []
        same_root = "src/black/linegen.py"
        index.update(same_root, DETECTOR.extract(same_root, "from black.mode import Gone\n"))
        assert [q.hypothesis for q in DETECTOR.evaluate(same_root, index)] == \
            ["BROKEN_IMPORT: black.mode.Gone"]


def test_an_import_of_a_test_package_left_out_of_the_watch_is_not_broken():
    # idlelib's modules import idlelib.idle_test under __main__; the tests are excluded
    files = {"idlelib/__init__.py": "", "idlelib/browser.py": "from idlelib.idle_test import h\n",
             "pkg/__init__.py": "", "pkg/a.py": "from pkg import tests\n"}
    assert found(files) == set()


def test_an_example_package_named_after_the_library_it_demonstrates_imports_the_library():
    files = {"examples/pydantic/__init__.py": "",
             "examples/pydantic/tasks.py": "from pydantic import BaseModel\n"}
    with using(tree_layout(files)):
        index = MemoryIndex()
        for path, text in files.items():
            index.update(path, DETECTOR.extract(path, text))
        assert [q for p in files for q in DETECTOR.evaluate(p, index)] == []


def test_a_class_that_builds_its_subclasses_with_type_is_not_judged_for_wiring():
    # Django's BaseManager.from_queryset gives _queryset_class to a type() subclass
    text = ("class BaseManager:\n    def __init__(self):\n        self.name = None\n"
            "    def deconstruct(self):\n        return self._queryset_class\n"
            "    @classmethod\n    def from_queryset(cls, qs):\n"
            "        return type('M', (cls,), {'_queryset_class': qs})\n")
    assert found({"manager.py": text}) == set()
    without = text.replace("(cls,)", "(object,)")
    assert found({"manager.py": without}) == \
        {"manager.py MISSING_WIRING: BaseManager._queryset_class"}


def test_a_redis_index_gives_the_same_bus_questions_as_memory(r):
    from kloros_tasks.state.index import RedisIndex  # noqa: PLC0415

    files = {"signals.py": ENUM, "bus.py": WRAPPER,
             "pub.py": "from signals import Signal\nbus.publish(Signal.EMERGENCY.value, 1)\n"
                       "from bus import Bus\nBus(s).send_event('jobs.done', b'')\n"
                       "sock.send_multipart([b'chem.alert', b''])\nr.lpush('jobs', 1)\n",
             "rec.py": "sock.setsockopt(zmq.SUBSCRIBE, b'')\n"}
    memory = questions_of(index_of(files))
    redis = questions_of(index_of(files, RedisIndex(r, "integration", "root")))
    assert len(memory) == 4
    assert [(q.id, q.evidence) for q in redis] == [(q.id, q.evidence) for q in memory]


def test_a_topic_keyword_makes_any_in_tree_class_a_possible_subscriber():
    recorder = ("class Recorder:\n    def __init__(self, topic):\n"
                "        self.sock = None\n        self.topic = topic\n"
                "    def start(self, ctx):\n        s = ctx.socket(zmq.SUB)\n"
                "        s.setsockopt(zmq.SUBSCRIBE, self.topic)\n")
    init = ("class Recorder:\n    def __init__(self, ctx, topic):\n"
            "        self.sock = ctx.socket(zmq.SUB)\n"
            "        self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())\n")
    user = "from rec import Recorder\nRecorder(ctx, topic='chem.alert')\n"
    pub = "bus.publish('chem.alert', 1)\n"
    assert found({"rec.py": init, "user.py": user, "pub.py": pub}) == set()
    # a parameter stored first and subscribed later is not followed, but the call
    # still covers the topic as a possible subscription
    assert found({"rec.py": recorder, "user.py": user.replace("ctx, ", ""), "pub.py": pub}) \
        == set()


# --- shapes found in kombu, redis-py and pyzmq ---------------------------------------------
def test_a_method_passing_a_single_frame_through_is_not_a_topic_wrapper():
    # pyzmq's ZMQStream.send(msg) sends [msg]: its callers' literals are messages
    stream = ("class ZMQStream:\n    def __init__(self, sock):\n        self.sock = sock\n"
              "    def send(self, msg, flags=0):\n        self.sock.send_multipart([msg])\n")
    caller = "def stop(pipe):\n    pipe.send(b'TERMINATE')\n"
    assert found({"zmqstream.py": stream, "auth.py": caller}) == set()


def test_a_call_with_fewer_arguments_than_the_wrapper_needs_is_another_method():
    caller = "conn.send_event('A')\n"  # send_event(topic, data) needs two
    assert found({"bus.py": WRAPPER, "app.py": caller}) == set()


@pytest.mark.parametrize("call", [
    "sns.subscribe(TopicArn=arn, Protocol='sqs', Endpoint=queue_arn)",  # boto
    "self.subscribe(channel, handler=handler)",  # redis-py keyspace notifications
])
def test_keyword_options_of_other_subscribe_methods_are_not_channels(call):
    assert found({"s.py": call + "\n"}) == set()


def test_redis_lists_pushed_in_test_code_are_not_judged():
    # redis-py's tests push 'a-list' to exercise SORT, OBJECT, TYPE...
    assert found({"tests/test_commands.py": "r.rpush('a-list', 3, 1)\nr.sort('a-list')\n"}) \
        == set()
