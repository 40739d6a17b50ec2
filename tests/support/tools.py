"""The one tool the front doors' integration tests ask the embedded Gemma to call, in the
shape each API wraps it in."""

from __future__ import annotations

from typing import Any

CITIES = ("Oslo", "Paris", "Tokyo")

# An enum, not a free string: a grammar inside a string admits most of Gemma's 262k tokens,
# which on a loaded 2-core machine can pass the worker's max_sample_ms per token.
WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"enum": list(CITIES)}},
    "required": ["city"],
}
WEATHER_NAME = "get_weather"
WEATHER_DESCRIPTION = "The current weather in a city."

# OpenAI's shape, which Ollama's /api/chat takes too.
WEATHER_FUNCTION: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": WEATHER_NAME,
        "description": WEATHER_DESCRIPTION,
        "parameters": WEATHER_PARAMETERS,
    },
}
