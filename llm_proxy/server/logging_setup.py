"""Log lines on stderr, as text for people or as JSON objects for log collectors.

``server.log_format`` picks the formatter; SIGHUP may switch it while running.
Fields passed with ``extra=`` (the access line's request id, status, latency…)
become keys of the JSON object; the text format carries them in the message.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from queue import SimpleQueue
from typing import IO, Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from ..audit.dburl import MaskSecrets

ACCESS = logging.getLogger("llm_proxy.access")
REFUSALS = logging.getLogger("aiohttp.server")  # where aiohttp reports requests its parser refused
HAND_OFF_DELAY = 0.02  # seconds a log record may wait to be passed to the writer
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Keys that every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


# What a client or a backend sends can hold line breaks, terminal escapes and
# undecodable bytes (as lone surrogates, aiohttp's header decoding). In a text
# log a line break would start a forged line; so every character that is not
# printable is written as its escape: the line stays one line and says what came.
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with each non-printable character (controls, surrogates, separators) escaped."""
    if text.isprintable():  # nearly always: one C-speed scan
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _encodable(value: Any) -> Any:
    """``value`` with lone surrogates escaped in every string (JSON escapes the rest itself)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encodable(v) for v in value]
    return value


def _json_line(data: dict[str, Any]) -> str:
    """One JSON object as text; strings that UTF-8 cannot encode are escaped, not lost."""
    try:
        return orjson.dumps(data, default=str).decode()
    except TypeError:  # a lone surrogate: orjson refuses what UTF-8 cannot encode
        return orjson.dumps(_encodable(data), default=lambda o: _encodable(str(o))).decode()


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, each record on one line: its message escaped by :func:`printable`.

    A traceback follows on lines of its own, as logging always writes it.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already, on its way through the hand-off queue
            data["exception"] = record.exc_text
        return _json_line(data)


class RefusalLine(logging.Filter):
    """aiohttp's report of a request its parser refused, as one warning line.

    aiohttp logs each one at ERROR with a traceback of its own parser: a dozen
    lines per malformed request, however many a client sends. What the proxy's
    operator needs is who sent it and why it was refused (the client got 400).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            reason = " ".join(str(exc.message).split())
            record.msg = "refused a malformed request from %s: %d %s"
            record.args = (remote, exc.code, reason[:200])
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_refusal_line = RefusalLine()


def formatter(log_format: str) -> logging.Formatter:
    """The formatter ``server.log_format`` names."""
    return JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT)


def _fixed(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of ``record`` that can wait: its message merged, its traceback rendered."""
    # Arguments are merged now (they may change once this returns) and a
    # traceback is rendered now (its frames go away); formatting waits.
    record = copy.copy(record)
    record.msg, record.args = record.getMessage(), None
    if record.exc_info:
        record.exc_text = record.exc_text or logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
    return record


# An item for the writer thread: a record to format, or an access line
# formatted already. Access lines are made on the event loop without a
# LogRecord: a record per request, made on the loop or formatted by the
# thread, was Python work either way, and the thread's held the GIL.
Item = logging.LogRecord | str
ACCESS_FIELDS = ("request_id", "method", "path", "status", "latency_ms", "model", "backend")
ACCESS_MESSAGE = "%s %s %d %dms model=%s backend=%s id=%s"


def access_message(values: tuple[Any, ...]) -> str:
    """The access line's message for ``values`` (in :data:`ACCESS_FIELDS` order)."""
    request_id, method, path, status, latency_ms, model, backend = values
    # The path, the model and the id are the client's: escaped, they cannot end the line.
    return printable(ACCESS_MESSAGE % (method, path, status, latency_ms, model or "-", backend, request_id))


class AccessLines:
    """Access lines in the format :func:`formatter` gives, with the date part made once a second."""

    def __init__(self, log_format: str) -> None:
        self.json = log_format == "json"
        self._second = -1
        self._date = ""

    def line(self, when: float, values: tuple[Any, ...]) -> str:
        """The line for ``values`` (in :data:`ACCESS_FIELDS` order), logged at ``when``."""
        message = access_message(values)
        second = int(when)
        if second != self._second:
            self._second = second
            if self.json:
                self._date = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            else:
                self._date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int((when - second) * 1000)
        if not self.json:  # logging.Formatter's asctime, then TEXT_FORMAT
            return f"{self._date},{millis:03d} INFO {ACCESS.name}: {message}"
        data = {
            "time": f"{self._date}.{millis:03d}Z",
            "level": "INFO",
            "logger": ACCESS.name,
            "message": message,
        }
        data.update(zip(ACCESS_FIELDS, values, strict=True))
        return _json_line(data)


class _HandOff(logging.Handler):
    """Gathers records on the event loop and passes them to the writer thread in batches.

    Waking the thread for every access line cost the loop a thread switch per
    request; a batch every :data:`HAND_OFF_DELAY` seconds costs one.
    """

    def __init__(self, queue: SimpleQueue[list[Item] | None]) -> None:
        super().__init__()
        self.queue = queue
        self.batch: list[Item] = []
        self._swap = threading.Lock()  # the batch is taken at stop() from another thread

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another thread, or no loop yet: straight to the writer
            self.queue.put([_fixed(record)])
            return
        self.gather(_fixed(record), loop)

    def gather(self, item: Item, loop: asyncio.AbstractEventLoop) -> None:
        """Add to the batch the loop passes on :data:`HAND_OFF_DELAY` seconds from now."""
        with self._swap:
            self.batch.append(item)
            first = len(self.batch) == 1
        if first:
            loop.call_later(HAND_OFF_DELAY, self.flush)

    def flush(self) -> None:
        with self._swap:
            batch, self.batch = self.batch, []
        if batch:
            self.queue.put(batch)


def _write(queue: SimpleQueue[list[Item] | None], handler: logging.StreamHandler[IO[str]]) -> None:
    """The writer thread: each batch formatted and written with one write; ``None`` ends it."""
    while (batch := queue.get()) is not None:
        lines = []
        for item in batch:
            if isinstance(item, str):
                lines.append(item + "\n")
                continue
            try:
                lines.append(handler.format(item) + "\n")
            except Exception:  # a record that cannot be formatted must not stop the rest
                handler.handleError(item)
        try:
            handler.stream.write("".join(lines))
            handler.stream.flush()
        except Exception:  # stderr closed: nothing else can say so
            handler.handleError(logging.makeLogRecord({"msg": "log lines lost"}))


_handler: logging.StreamHandler[IO[str]] | None = None
_access_lines = AccessLines("text")
_writer: threading.Thread | None = None
_hand_off: _HandOff | None = None


def setup(log_format: str, stream: IO[str] | None = None) -> None:
    """Send INFO and above to stderr in ``log_format`` (the ``serve`` command calls this once).

    Lines are formatted and written by a thread of their own: one access line
    per request would otherwise cost the event loop a write() each (a tenth of
    its time under load, measured with py-spy).
    """
    global _handler, _writer, _hand_off, _access_lines
    root = logging.getLogger()
    stop()
    # What no format here uses, records need not gather (the logging docs'
    # "Optimization" section): the caller's file and line (a stack walk per
    # record), the thread and the process id (a getpid() per record in 3.11).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    _handler = logging.StreamHandler(stream or sys.stderr)
    _handler.setFormatter(formatter(log_format))
    _access_lines = AccessLines(log_format)
    queue: SimpleQueue[list[Item] | None] = SimpleQueue()
    _writer = threading.Thread(target=_write, args=(queue, _handler), name="log-writer", daemon=True)
    _writer.start()
    _hand_off = _HandOff(queue)
    _hand_off.addFilter(MaskSecrets())  # a database URL's password never reaches a log line
    root.addHandler(_hand_off)
    root.setLevel(logging.INFO)
    REFUSALS.addFilter(_refusal_line)
    atexit.register(stop)


def stop() -> None:
    """Write what is gathered and stop the writer thread (at exit, or before a new setup)."""
    global _writer, _hand_off
    if _hand_off is not None:
        logging.getLogger().removeHandler(_hand_off)
        _hand_off.flush()
        if _writer is not None:
            _hand_off.queue.put(None)
            _writer.join()
        _hand_off = _writer = None


def set_format(log_format: str) -> None:
    """Switch the format of the handler :func:`setup` installed (a reload)."""
    global _access_lines
    if _handler is not None:
        _handler.setFormatter(formatter(log_format))
        _access_lines = AccessLines(log_format)


def access(
    *,
    request_id: str | None,
    method: str,
    path: str,
    status: int,
    latency_ms: int,
    model: str | None,
    backend: str,
) -> None:
    """The one access line a request leaves."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    values = (request_id, method, path, status, latency_ms, model, backend)
    hand_off = _hand_off
    if hand_off is not None:
        try:
            hand_off.gather(_access_lines.line(time.time(), values), asyncio.get_running_loop())
            return
        except RuntimeError:  # not on the event loop: the ordinary way below
            pass
    ACCESS.info(access_message(values), extra=dict(zip(ACCESS_FIELDS, values, strict=True)))
