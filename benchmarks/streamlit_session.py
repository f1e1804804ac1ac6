"""A visitor of a Streamlit app that speaks the app's own websocket protocol instead of running a browser.

A browser tab talks to `streamlit run` over one websocket (`/_stcore/stream`): it asks for script
runs (`BackMsg.rerun_script`, with the address's query string, the page and the values of the
widgets the visitor changed) and draws the elements the server sends back (`ForwardMsg`). This
class does the same from Python, so a benchmark can play dozens of visitors on a machine where
dozens of Chromium renderers would take all the CPU. It reads text and clicks buttons by their
labels, sets number inputs, switches pages and reruns the page's `run_every` fragments at their
interval, as the browser does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

EARLY_FOR_RERUN = ForwardMsg.ScriptFinishedStatus.FINISHED_EARLY_FOR_RERUN
WHOLE_RUN = ForwardMsg.ScriptFinishedStatus.FINISHED_SUCCESSFULLY
TEXT_FIELDS = ("body", "label", "text", "caption")


class SessionError(RuntimeError):
    """The app did not show what the visitor waited for."""


class Session:
    """One visitor: a websocket to the app, and what the app last drew for it."""

    def __init__(self, url: str, query: str = ""):
        self.url = url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/_stcore/stream"
        self.query = query
        self.pages: dict[str, str] = {}  # page name -> script hash
        self.page_hash = ""
        self.elements: dict[tuple, object] = {}
        self._drawn_in: dict[tuple, int] = {}  # element path -> the script run that drew it
        self._run = 0
        self.fragments: dict[str, float] = {}  # run_every fragment id -> interval in seconds
        self.values: dict[str, WidgetState] = {}
        self.exceptions: list[str] = []
        self._socket = None
        self._reader = None
        self._finished = asyncio.Event()
        self._runs_finished = 0

    async def __aenter__(self) -> Session:
        self._socket = await websockets.connect(self.url, subprotocols=["streamlit"], max_size=None,
                                                open_timeout=60, ping_interval=None)
        self._reader = asyncio.create_task(self._read())
        await self.rerun()
        return self

    async def __aexit__(self, *exc) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._socket.close()

    # What the visitor does ------------------------------------------------------------------------

    async def rerun(self, *, triggers: tuple[str, ...] = (), fragment: str = "", timeout: float = 120) -> None:
        """Asks for a script run (of one fragment when `fragment` is set) and waits until it has ended."""
        message = BackMsg()
        state = message.rerun_script
        state.query_string = self.query
        state.page_script_hash = self.page_hash
        if fragment:
            state.fragment_id = fragment
            state.is_auto_rerun = True
        state.widget_states.widgets.extend(self.values.values())
        for widget_id in triggers:
            state.widget_states.widgets.add(id=widget_id, trigger_value=True)
        before = self._runs_finished
        self._finished.clear()
        await self._socket.send(message.SerializeToString())
        deadline = time.monotonic() + timeout
        while self._runs_finished == before:
            if self._reader.done():
                raise SessionError("the server closed the connection") from self._reader.exception()
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionError(f"the page did not finish drawing within {timeout:.0f}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._finished.wait(), min(left, 1.0))
            self._finished.clear()

    async def open_page(self, name: str) -> None:
        self.page_hash = self.pages[name]
        await self.rerun()

    async def click(self, label: str) -> None:
        await self.rerun(triggers=(self.widget("button", label).id,))

    async def set_number(self, label: str, value: float) -> None:
        widget = self.widget("number_input", label)
        state = WidgetState(id=widget.id)
        if widget.data_type == widget.INT:
            state.int_value = int(value)
        else:
            state.double_value = float(value)
        self.values[widget.id] = state
        await self.rerun()

    async def wait_for_text(self, *texts: str, timeout: float) -> str:
        """Reruns the page's live fragments at their interval, as the browser does, until one of
        `texts` is on the page; returns the one found."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((text for text in texts if self.shows(text)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise SessionError(f"none of {texts} appeared within {timeout:.0f}s")
            interval = min(self.fragments.values(), default=1.0)
            await asyncio.sleep(interval)
            for fragment in list(self.fragments):
                if fragment in self.fragments:  # a whole run, started by the one before, may have ended it
                    await self.rerun(fragment=fragment)

    # What the page shows -------------------------------------------------------------------------

    def text(self) -> str:
        parts = []
        for element in self.elements.values():
            for field in TEXT_FIELDS:
                value = getattr(element, field, None)
                if isinstance(value, str):
                    parts.append(value)
        return "\n".join(parts)

    def shows(self, text: str) -> bool:
        return text in self.text()

    def widget(self, kind: str, label: str):
        for element in self.elements.values():
            if type(element).__name__.lower() == kind.replace("_", "") and getattr(element, "label", None) == label:
                if getattr(element, "disabled", False):
                    raise SessionError(f"the {kind} {label!r} is disabled")
                return element
        raise SessionError(f"no {kind} labelled {label!r} on the page")

    # What the server sends -----------------------------------------------------------------------

    async def _read(self) -> None:
        async for data in self._socket:
            message = ForwardMsg()
            message.ParseFromString(data)
            self._take(message)

    def _take(self, message: ForwardMsg) -> None:
        kind = message.WhichOneof("type")
        if kind == "navigation":
            self.pages = {page.page_name: page.page_script_hash for page in message.navigation.app_pages}
            if not self.page_hash:
                self.page_hash = message.navigation.page_script_hash
        elif kind == "new_session":
            self._run += 1
            if not message.metadata.run.fragment_ids:  # a whole run registers its live fragments afresh
                self.fragments.clear()
            self.page_hash = message.new_session.page_script_hash or self.page_hash
        elif kind == "page_info_changed":
            self.query = message.page_info_changed.query_string
        elif kind == "auto_rerun":
            self.fragments[message.auto_rerun.fragment_id] = message.auto_rerun.interval
        elif kind == "delta":
            self._draw(tuple(message.metadata.delta_path), message.delta)
        elif kind == "script_finished" and message.script_finished != EARLY_FOR_RERUN:
            if message.script_finished == WHOLE_RUN:  # what that run did not draw is gone, as in the browser
                for stale in [p for p, run in self._drawn_in.items() if run < self._run]:
                    self.elements.pop(stale, None)
                    del self._drawn_in[stale]
            self._runs_finished += 1
            self._finished.set()

    def _draw(self, path: tuple, delta) -> None:
        kind = delta.WhichOneof("type")
        if kind == "add_block":
            for old in [p for p in self.elements if p[:len(path)] == path]:
                del self.elements[old]
                del self._drawn_in[old]
        elif kind == "new_element":
            element = getattr(delta.new_element, delta.new_element.WhichOneof("type"))
            self.elements[path] = element
            self._drawn_in[path] = self._run
            if type(element).__name__ == "Exception":
                self.exceptions.append(element.message)
