"""One spoken Home Assistant request of many tool rounds, driven with the real ``ollama`` client.

The shapes are those of home-assistant/core ``homeassistant/components/ollama``
and ``helpers/llm.py`` (see docs/home-assistant.md): a system prompt with the
instructions and the overview of exposed entities, the Assist API's intent
tools with their parameter schemas, and on every round the whole conversation
again, with the assistant's tool calls and the tool results appended. The
content is synthesised in those shapes (a house of 40 entities, 24 intents),
not recorded from a live Home Assistant.

The llama-server double answers with a tool call while ``scenario`` says so;
the last round gets a plain answer.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama

from .llama_double import LlamaServerDouble

# One intent tool in the shape Home Assistant sends it, for tests that need just one.
TURN_ON: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on a device",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string", "description": "Name of the device"}},
            "required": ["name"],
        },
    },
}

AREAS = ["Kitchen", "Living Room", "Bedroom", "Office", "Bathroom", "Hallway", "Garage", "Garden"]
KINDS = [
    ("light", "Ceiling Light", "on"), ("switch", "Socket", "off"), ("sensor", "Temperature", "21.5 °C"),
    ("cover", "Blinds", "open"), ("media_player", "Speaker", "idle"),
]  # fmt: skip

SYSTEM = (
    "You are a voice assistant for Home Assistant.\n"
    "Answer questions about the world truthfully.\n"
    "Answer in plain text. Keep it simple and to the point.\n"
    "When controlling Home Assistant always call the intent tools. Use HassTurnOn to lock and "
    "HassTurnOff to unlock a lock. When controlling a device, prefer passing just name and domain. "
    "When controlling an area, prefer passing just area name and domain.\n"
    "When a user asks to turn on all devices of a specific type, ask user to specify an area, "
    "unless there is only one device of that type.\n"
    "This device is not able to start timers.\n"
    "You ARE equipped to answer questions about the current state of\nthe home using the "
    "`GetLiveContext` tool. This is a primary function. Do not state you lack the\n"
    "functionality if the question requires live data.\n"
    "Static Context: An overview of the areas and the devices in this smart home:\n"
    + "".join(
        f"- names: {area} {name}\n  domain: {domain}\n  state: '{state}'\n  areas: {area}\n"
        for area in AREAS
        for domain, name, state in KINDS
    )
    + "Current time is 03:12:45. Today's date is 2026-11-22."
)

DOMAINS = ["light", "switch", "fan", "cover", "lock", "media_player", "climate", "vacuum", "valve", "scene"]
CLASSES = ["tv", "speaker", "receiver", "awning", "blind", "curtain", "damper", "door", "garage", "gate",
           "shade", "shutter", "window", "water", "gas", "outlet"]  # fmt: skip


def _target(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": {"type": "string"},
        "area": {"type": "string"},
        "floor": {"type": "string"},
        "domain": {"type": "array", "items": {"type": "string", "enum": DOMAINS}},
        "device_class": {"type": "array", "items": {"type": "string", "enum": CLASSES}},
    }
    return {"type": "object", "properties": {**props, **(extra or {})}, "required": []}


INTENTS = [
    ("HassTurnOn", "Turns on/opens/presses a device or entity. For locks, this performs a 'lock' action.",
     None),
    ("HassTurnOff", "Turns off/closes a device or entity. For locks, this performs an 'unlock' action.",
     None),
    ("HassCancelAllTimers", "Cancels all timers", {"area": {"type": "string"}}),
    ("HassLightSet", "Sets the brightness percentage or color of a light",
     {"brightness": {"type": "integer", "minimum": 0, "maximum": 100}, "color": {"type": "string"}}),
    ("HassClimateSetTemperature", "Sets the target temperature of a climate device or entity",
     {"temperature": {"type": "number"}}),
    ("HassSetPosition", "Sets the position of a device or entity",
     {"position": {"type": "integer", "minimum": 0, "maximum": 100}}),
    ("HassMediaPause", "Pauses a media player", None),
    ("HassMediaUnpause", "Resumes a media player", None),
    ("HassMediaNext", "Skips a media player to the next item", None),
    ("HassMediaPrevious", "Replays the previous item for a media player", None),
    ("HassSetVolume", "Sets the volume percentage of a media player",
     {"volume_level": {"type": "integer", "minimum": 0, "maximum": 100}}),
    ("HassSetVolumeRelative", "Increases or decreases the volume of a media player",
     {"volume_step": {"anyOf": [{"type": "string", "enum": ["up", "down"]}, {"type": "integer"}]}}),
    ("HassMediaSearchAndPlay", "Searches for media and plays the first result",
     {"search_query": {"type": "string"},
      "media_class": {"type": "string", "enum": ["album", "artist", "track", "playlist", "podcast"]}}),
    ("HassFanSetSpeed", "Sets a fan's speed by percentage",
     {"percentage": {"type": "integer", "minimum": 0, "maximum": 100}}),
    ("HassVacuumStart", "Starts a vacuum", None),
    ("HassVacuumReturnToBase", "Returns a vacuum to base", None),
    ("HassListAddItem", "Add item to a todo list",
     {"item": {"type": "string"}, "name": {"type": "string"}}),
    ("HassListCompleteItem", "Complete item on a todo list",
     {"item": {"type": "string"}, "name": {"type": "string"}}),
    ("HassShoppingListAddItem", "Adds an item to the shopping list", {"item": {"type": "string"}}),
    ("HassGetWeather", "Gets the current weather", {"name": {"type": "string"}}),
    ("HassGetCurrentDate", "Gets the current date", None),
    ("HassGetCurrentTime", "Gets the current time", None),
    ("HassBroadcast", "Broadcast a message through the home", {"message": {"type": "string"}}),
    ("GetLiveContext", "Provides real-time information about the CURRENT state, value, or mode of "
     "devices, sensors, entities, or areas. Use this tool for: 1. Answering questions about current "
     "conditions (e.g., 'Is the light on?'). 2. As the first step in conditional actions (e.g., 'If "
     "the weather is rainy, turn off sprinklers' requires checking the weather first).", {}),
]  # fmt: skip

TOOLS = [
    {"type": "function", "function": {"name": name, "description": desc,
                                      "parameters": _target(extra) if extra is not None else _target()}}
    for name, desc, extra in INTENTS
]  # fmt: skip


class Capture:
    """Keeps the exact bytes of every request body the client sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, request: httpx.Request) -> None:
        if request.method == "POST":
            self.bodies.append(await request.aread())


def client(url: str, capture: Capture, agent: str | None = None) -> ollama.AsyncClient:
    """The ollama client as Home Assistant builds it, recording what it sends."""
    hooks: list[Any] = [capture]
    if agent:  # the ollama client insists on its own User-Agent; another client would not

        async def rename(request: httpx.Request) -> None:
            request.headers["User-Agent"] = agent

        hooks.insert(0, rename)
    return ollama.AsyncClient(host=url, event_hooks={"request": hooks})


async def spoken_request(
    c: ollama.AsyncClient,
    double: LlamaServerDouble,
    messages: list[ollama.Message],
    text: str,
    rounds: int,
) -> str:
    """One spoken request: ``rounds - 1`` tool rounds, then the answer; extends ``messages``."""
    messages.append(ollama.Message(role="user", content=text))
    for n in range(rounds):
        if n < rounds - 1:
            double.scenario = "chat-tools-stream"
        stream = await c.chat(
            model="smollm2", messages=messages, tools=TOOLS, stream=True,
            keep_alive="-1.0s", options={"num_ctx": 8192.0}, think=False,
        )  # fmt: skip
        content, calls = "", list[ollama.Message.ToolCall]()
        async for chunk in stream:
            content += chunk.message.content or ""
            calls.extend(chunk.message.tool_calls or [])
        messages.append(ollama.Message(role="assistant", content=content or None, tool_calls=calls or None))
        if not calls:
            return content
        for _ in calls:
            messages.append(ollama.Message(role="tool", content=json.dumps({"success": True, "round": n})))
    raise AssertionError("the model kept calling tools")


def start_messages() -> list[ollama.Message]:
    """A fresh conversation: the system prompt only."""
    return [ollama.Message(role="system", content=SYSTEM)]
