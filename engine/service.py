"""engine.service: the engine's operations as channel verbs.

A request is ``{"verb": V, "args": {...}, "ret": Sender}``.  The answer goes on
``ret``: one message for most verbs; a stream of messages for ``log``, ``attach`` and
``exec``; then ``ret`` is closed.  A failure closes ``ret`` with an error whose
``code`` is stable (``not_found``, ``conflict``, ``invalid_argument``, ...).  Each
request runs in its own thread, so a long ``wait`` or ``log --follow`` never holds up
another client; a verb that waits with nothing to send (``wait``, a followed ``log`` or
``watch``, an idle ``attach`` or ``exec``) looks twice a second whether its client is
still there (``Sender.peer_gone``) and ends once it is not.

Verbs (args in parentheses; ``id`` is a container name, id or id prefix):

- containers: ``create`` (image, cmd, entrypoint, env, workdir, user, name, hostname,
  labels, memory, cpus, pids_limit, network, read_only, privileged, open_stdin, tty,
  auto_remove, ports, network_aliases, binds: ``["/host:/ctr[:ro]", "volume:/ctr", "/ctr",
  ...]``) -> ``{"id"}``; ``spawn`` (create's args) creates and starts;
  ``start``/``stop`` (timeout)/``kill`` (signal)/``rm`` (force, volumes)/``pause``/``unpause``
  (id); ``resize`` (id, rows, cols) for a container made with ``tty``; ``wait`` (id,
  condition) -> ``{"exit_code"}``; ``ls`` (all, filters: ``["status=exited", ...]``:
  id, name, status, label, ancestor, volume) -> list; ``get`` (id) -> inspect dict;
  ``log`` (id, follow, tail, batch, since_ns, until_ns: nanoseconds since the epoch) -> stream of
  ``{"stream", "log", "time"}`` (with ``batch``, lists of them); ``attach`` (id, stdin, stdout, stderr) and ``exec``
  (id, cmd, env, workdir, user, open_stdin, tty) -> first ``{"stdin": ByteStream|None}``
  (for ``exec`` with ``tty`` also ``"resize"``: a Sender of ``{"rows", "cols"}``), then
  ``{"stream", "data"}`` messages, last ``{"exit_code"}``;
  ``commit`` (id, ref, comment, author, changes) -> ``{"id"}``; ``changes`` (id) ->
  list of ``{"Path", "Kind"}`` (0 changed, 1 added, 2 deleted: ``docker diff``);
  ``top`` (id) -> ``{"Titles", "Processes"}`` (``ps -ef``'s columns, host PIDs);
  ``stats`` (id, interval or previous) -> the Docker API's stats shape (``docker stats``);
  ``container_prune`` -> ``{"deleted": [ids]}`` (every container not running);
  ``update`` (id, memory, cpus, pids_limit) -> ``{}``: new limits, live and for later runs;
  ``rename`` (id, name) -> ``{}``.
- images: ``images`` -> list; ``image_get`` (ref); ``history`` (ref); ``tag`` (source,
  ref); ``rmi`` (ref, force) -> list of lines; ``import`` (path, ref, changes, comment)
  -> ``{"id"}``; ``bootstrap`` (ref) -> ``{"id"}`` (busybox from the host);
  ``image_prune`` (all) -> ``{"lines"}``: rmi's lines for the images no container uses
  (untagged ones; with ``all`` every one).
- events: ``watch`` (since, filters, follow) -> stream of events
  ``{"seq", "type", "action", "id", "name", "image", "time", "attributes"}``; without
  ``since`` from now on; with it, every event after that number the journal still holds.
- host: ``info``, ``version``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import chan

from .engine import Engine
from .errors import Cancelled, EngineError, InvalidArgument
from .monitor_client import CANCEL_CHECK



def _log() -> Any:
    import logging  # ~6 ms to import; needed only when something goes wrong

    return logging.getLogger("chanbox.service")

Handler = Callable[[Engine, "_Args", Any], Any]
VERBS: dict[str, Handler] = {}


def verb(name: str) -> Callable[[Handler], Handler]:
    """Register a verb's handler; it returns the one reply, or streams on ``ret`` itself
    and returns :data:`STREAMED`."""
    def deco(fn: Handler) -> Handler:
        VERBS[name] = fn
        return fn
    return deco


STREAMED = object()


# Verbs that may wait for a long time (on a container, on a client that reads slowly)
# get a thread of their own; the others share a pool, so a burst of quick requests does
# not pay a thread start each.
_LONG_VERBS = frozenset({"attach", "exec", "log", "wait", "watch", "stop", "start", "stats",
                         "spawn", "commit", "import", "bootstrap", "rm", "load", "save",
                         "pull", "push", "export", "container_prune", "image_prune",
                         "archive_get", "archive_put"})


class _Workers:
    """Up to ``size`` threads answering quick requests from one queue, started as the
    load needs them.  (concurrent.futures would do, but its imports cost every CLI
    command ~4 ms, for futures nobody reads.)"""

    def __init__(self, size: int) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._size = size
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._jobs.put((fn, args))
            if self._idle == 0 and self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, daemon=True,
                                 name=f"chanbox-verb-{self._threads}").start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            fn, args = self._jobs.get()
            with self._lock:
                self._idle -= 1
            fn(*args)  # handle() never raises


_POOL = _Workers(8)


def serve(engine: Engine, requests: chan.Receiver) -> None:
    """Answer every request that arrives on ``requests`` until it is closed (or its
    client goes away: the requests already running finish on their own)."""
    try:
        for req in requests:
            verb_name = req.get("verb") if isinstance(req, dict) else None
            if verb_name in _LONG_VERBS:
                threading.Thread(target=handle, args=(engine, req), daemon=True,
                                 name=f"chanbox-{verb_name}").start()
            else:
                _POOL.submit(handle, engine, req)
    except chan.ChannelError as exc:
        _log().info("client gone: %s", exc)


def serve_in_thread(engine: Engine, requests: chan.Receiver) -> threading.Thread:
    """:func:`serve` in a daemon thread; the thread is returned started."""
    t = threading.Thread(target=serve, args=(engine, requests), daemon=True,
                         name="chanbox-service")
    t.start()
    return t


def handle(engine: Engine, req: Any) -> None:
    """Answer one request; never raises (a request without ``ret`` is logged and dropped)."""
    ret = req.get("ret") if isinstance(req, dict) else None
    if not isinstance(ret, chan.Sender):
        _log().warning("dropped a request without a 'ret' Sender: %.200r", req)
        _close_ends(req)
        return
    try:
        name = req.get("verb")
        if not isinstance(name, str) or name not in VERBS:
            raise InvalidArgument(f"unknown verb {name!r}; known verbs: "
                                  f"{', '.join(sorted(VERBS))}")
        args = req.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InvalidArgument(f"{name}: 'args' must be a map, not {type(args).__name__}")
        try:
            result = VERBS[name](engine, _Args(name, args), ret)
        finally:
            # the ends a request carries (save's and load's streams) are the verb's for
            # its duration: a client waiting on one must not wait for ever when it fails
            _close_ends(args)
        if result is not STREAMED:
            ret.send(result)
        ret.close()
    except Cancelled as exc:
        _log().info("client of %r gone while it waited: %s", req.get("verb"), exc)
        _abandon(ret)
    except EngineError as exc:
        _fail(ret, exc)
    except chan.ChannelError as exc:
        # the client went away mid-answer: nothing to tell it
        _log().info("client of %r gone: %s", req.get("verb"), exc)
        _abandon(ret)
    except Exception as exc:  # noqa: BLE001 -- the service must outlive a bug in a verb
        _log().exception("verb %r failed", req.get("verb"))
        err = EngineError(f"internal error in {req.get('verb')!r}: {exc!r}")
        _fail(ret, err)


def _fail(ret: chan.Sender, exc: Exception) -> None:
    try:
        ret.close(error=exc)
    except chan.ChannelError:
        pass


def _client_gone(ret: chan.Sender) -> Callable[[], bool]:
    """For verbs that wait with nothing to send: whether to give up (nobody listens).

    Without it such a verb would learn that its client vanished only at its next send,
    and a follow of an idle container or journal would keep its thread forever."""
    return lambda: ret.peer_gone


def _abandon(ret: chan.Sender) -> None:
    try:
        ret.close()
    except chan.ChannelError:
        pass


def _close_ends(value: Any) -> None:
    """Close the channel ends inside a message we will not answer."""
    if isinstance(value, dict):
        for v in value.values():
            _close_ends(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _close_ends(v)
    elif isinstance(value, (chan.Sender, chan.Receiver, chan.ByteStream)):
        try:
            value.close()
        except chan.ChannelError:
            pass


class _Args:
    """Typed access to a request's args, with errors that name the verb and the arg."""

    _TYPES: dict[type, tuple[type, ...]] = {float: (int, float)}  # an int is a fine float

    def __init__(self, verb: str, args: dict[str, Any]) -> None:
        self.verb = verb
        self.args = args

    def get(self, key: str, typ: type | tuple[type, ...], default: Any = None,
            *, required: bool = False) -> Any:
        if key not in self.args or self.args[key] is None:
            if required:
                raise InvalidArgument(f"{self.verb}: missing argument {key!r}")
            return default
        v = self.args[key]
        types = self._TYPES.get(typ, (typ,)) if isinstance(typ, type) else typ
        # bool is an int subclass: true is not a memory limit or a timeout
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise InvalidArgument(f"{self.verb}: argument {key!r} must be "
                                  f"{_type_name(typ)}, not {type(v).__name__}")
        return v

    def strings(self, key: str, default: list[str] | None = None) -> list[str] | None:
        v = self.get(key, (list, tuple), default)
        if v is not None and not all(isinstance(s, str) for s in v):
            raise InvalidArgument(f"{self.verb}: argument {key!r} must be a list of strings")
        return list(v) if v is not None else None

    def id(self) -> str:
        return self.get("id", str, required=True)


def _type_name(typ: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a map", (list, tuple): "a list"}
    return names.get(typ, str(typ))


# -- containers --------------------------------------------------------------------------

def _create(engine: Engine, a: _Args) -> str:
    labels = a.get("labels", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidArgument(f"{a.verb}: labels must map strings to strings")
    return engine.create(
        a.get("image", str, required=True), a.strings("cmd"),
        entrypoint=a.strings("entrypoint"), env=a.strings("env", []),
        workdir=a.get("workdir", str, ""), user=a.get("user", str, ""),
        name=a.get("name", str), hostname=a.get("hostname", str, ""), labels=labels,
        memory=a.get("memory", int), cpus=a.get("cpus", float),
        pids_limit=a.get("pids_limit", int), network=a.get("network", str, "bridge"),
        read_only=a.get("read_only", bool, False), privileged=a.get("privileged", bool, False),
        open_stdin=a.get("open_stdin", bool, False), tty=a.get("tty", bool, False),
        auto_remove=a.get("auto_remove", bool, False),
        ports=a.get("ports", (list, tuple), []),
        network_aliases=a.strings("network_aliases", []), binds=a.strings("binds", []))


@verb("create")
def _v_create(engine: Engine, a: _Args, ret: Any) -> Any:
    return {"id": _create(engine, a)}


@verb("spawn")
def _v_spawn(engine: Engine, a: _Args, ret: Any) -> Any:
    cid = _create(engine, a)
    engine.start(cid)
    return {"id": cid}


@verb("start")
def _v_start(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.start(a.id())
    return {"id": a.id()}


@verb("stop")
def _v_stop(engine: Engine, a: _Args, ret: Any) -> Any:
    return {"exit_code": engine.stop(a.id(), timeout=a.get("timeout", float, 10))}


@verb("resize")
def _v_resize(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.resize(a.id(), a.get("rows", int, required=True), a.get("cols", int, required=True))
    return {}


@verb("kill")
def _v_kill(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.kill(a.id(), a.get("signal", (str, int), "KILL"))
    return {}


@verb("wait")
def _v_wait(engine: Engine, a: _Args, ret: Any) -> Any:
    return {"exit_code": engine.wait(a.id(), a.get("condition", str, "not-running"),
                                     cancelled=_client_gone(ret))}


@verb("rm")
def _v_rm(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.rm(a.id(), force=a.get("force", bool, False), volumes=a.get("volumes", bool, False))
    return {}


@verb("pause")
def _v_pause(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.pause(a.id())
    return {}


@verb("unpause")
def _v_unpause(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.unpause(a.id())
    return {}


@verb("changes")
def _v_changes(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.changes(a.id())


@verb("rename")
def _v_rename(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.rename(a.id(), a.get("name", str, required=True))
    return {}


@verb("update")
def _v_update(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.update(a.id(), memory=a.get("memory", int), cpus=a.get("cpus", (int, float)),
                  pids_limit=a.get("pids_limit", int))
    return {}


@verb("container_prune")
def _v_container_prune(engine: Engine, a: _Args, ret: Any) -> Any:
    return {"deleted": engine.prune_containers()}


@verb("image_prune")
def _v_image_prune(engine: Engine, a: _Args, ret: Any) -> Any:
    return {"lines": engine.prune_images(all_images=a.get("all", bool, False))}


@verb("top")
def _v_top(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.top(a.id())


@verb("stats")
def _v_stats(engine: Engine, a: _Args, ret: Any) -> Any:
    previous = a.get("previous", dict)
    return engine.stats(a.id(), interval=a.get("interval", (int, float), 0.0), previous=previous)


@verb("ls")
def _v_ls(engine: Engine, a: _Args, ret: Any) -> Any:
    filters = a.strings("filters", [])
    # as Docker: a status filter looks at every container, -a or not
    rows = engine.ps(all=a.get("all", bool, False) or any(f.startswith("status=") for f in filters))
    if filters:
        from .filters import filter_containers, parse_filter_args

        rows = filter_containers(rows, parse_filter_args(filters))
    return rows


@verb("get")
def _v_get(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.inspect(a.id())


@verb("commit")
def _v_commit(engine: Engine, a: _Args, ret: Any) -> Any:
    return {"id": engine.commit(a.id(), a.get("ref", str), comment=a.get("comment", str, ""),
                                author=a.get("author", str, ""),
                                changes=a.get("changes", dict),
                                pause=a.get("pause", bool, True))}


@verb("log")
def _v_log(engine: Engine, a: _Args, ret: Any) -> Any:
    batches = engine.log_batches(a.id(), follow=a.get("follow", bool, False),
                                 tail=a.get("tail", int), cancelled=_client_gone(ret),
                                 since_ns=a.get("since_ns", int), until_ns=a.get("until_ns", int))
    if a.get("batch", bool, False):
        for batch in batches:  # a list of entries per message (per read of the log)
            ret.send(batch)
    else:
        for batch in batches:
            for entry in batch:
                ret.send(entry)
    return STREAMED


def _stream_attachment(att: Any, ret: Any, stdin: bool, tty: bool = False) -> Any:
    """Send an attachment's output on ``ret`` and feed a chan stream to its stdin; with
    ``tty``, the first message also carries a ``resize`` Sender for the terminal's size
    (``{"rows", "cols"}`` messages)."""
    first: dict[str, Any] = {"stdin": None}
    if stdin:
        ours, first["stdin"] = chan.stream_pair()
        threading.Thread(target=_pump_stdin, args=(ours, att), daemon=True,
                         name="chanbox-stdin").start()
    sizes = None
    if tty:
        first["resize"], sizes = chan.pipe()
        threading.Thread(target=_pump_sizes, args=(sizes, att), daemon=True,
                         name="chanbox-resize").start()
    try:
        ret.send(first)
        while True:
            try:
                item = att.read(timeout=CANCEL_CHECK)
            except TimeoutError:
                if ret.peer_gone:
                    raise Cancelled("the client of this attachment left") from None
                continue
            if item is None:
                break
            ret.send({"stream": item[0], "data": item[1]})
        ret.send(dict(att.exit or {}))
    finally:
        att.close()
        if sizes is not None:
            sizes.close()  # ends _pump_sizes
    return STREAMED


def _pump_sizes(sizes: chan.Receiver, att: Any) -> None:
    try:
        for size in sizes:
            if isinstance(size, dict):
                att.resize(int(size["rows"]), int(size["cols"]))
    except (chan.ChannelError, OSError, EngineError, KeyError, TypeError, ValueError):
        pass  # the process ended, the client left, or sent nonsense: sizes stop here


def _pump_stdin(stream: chan.ByteStream, att: Any) -> None:
    try:
        while True:
            data = stream.read(65536)
            if not data:
                break
            att.write(data)
        att.close_stdin()
    except (chan.ChannelError, OSError, EngineError):
        pass  # the process ended or the client left; the output side reports it


@verb("attach")
def _v_attach(engine: Engine, a: _Args, ret: Any) -> Any:
    stdin = a.get("stdin", bool, False)
    att = engine.attach(a.id(), stdin=stdin, stdout=a.get("stdout", bool, True),
                        stderr=a.get("stderr", bool, True))
    return _stream_attachment(att, ret, stdin)


@verb("exec")
def _v_exec(engine: Engine, a: _Args, ret: Any) -> Any:
    stdin = a.get("open_stdin", bool, False)
    tty = a.get("tty", bool, False)
    att = engine.exec(a.id(), a.strings("cmd", []) or [], env=a.strings("env", []),
                      workdir=a.get("workdir", str, ""), user=a.get("user", str, ""),
                      open_stdin=stdin, tty=tty)
    return _stream_attachment(att, ret, stdin, tty)


# -- images ------------------------------------------------------------------------------

@verb("images")
def _v_images(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.image_list()


@verb("image_get")
def _v_image_get(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.image_inspect(a.get("ref", str, required=True))


@verb("history")
def _v_history(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.history(a.get("ref", str, required=True))


@verb("tag")
def _v_tag(engine: Engine, a: _Args, ret: Any) -> Any:
    engine.tag(a.get("source", str, required=True), a.get("ref", str, required=True))
    return {}


@verb("rmi")
def _v_rmi(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.rmi(a.get("ref", str, required=True), force=a.get("force", bool, False))


@verb("import")
def _v_import(engine: Engine, a: _Args, ret: Any) -> Any:
    return {"id": engine.import_image(a.get("path", str, required=True), a.get("ref", str),
                                      changes=a.get("changes", dict),
                                      comment=a.get("comment", str, ""))}


@verb("bootstrap")
def _v_bootstrap(engine: Engine, a: _Args, ret: Any) -> Any:
    return {"id": engine.bootstrap(a.get("ref", str, "busybox:latest"))}


# -- events ------------------------------------------------------------------------------

@verb("watch")
def _v_watch(engine: Engine, a: _Args, ret: Any) -> Any:
    from .events import parse_filters

    filters = parse_filters(a.strings("filters", []))
    since = a.get("since", int)
    if since is None:
        since = engine.journal.last_seq()  # like docker events: from now on
    if a.get("follow", bool, True):
        for event in engine.journal.follow(since, filters, cancelled=_client_gone(ret)):
            ret.send(event)
    else:
        for event in engine.journal.read(since, filters):
            ret.send(event)
    return STREAMED


# -- host --------------------------------------------------------------------------------

@verb("info")
def _v_info(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.info()


@verb("version")
def _v_version(engine: Engine, a: _Args, ret: Any) -> Any:
    return engine.version()


# More verbs, each family in its own module.
from . import service_network, service_transfer, service_volume  # noqa: E402,F401
