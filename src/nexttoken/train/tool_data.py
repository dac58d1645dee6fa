"""A tool-use set for supervised fine-tuning, built from templates so that it needs no download:
five functions with typed parameters (a calculator, a unit converter, a date difference, a weather
lookup, a web search), requests for each in varied wording, the call the request asks for, the
function's result, and a reply that answers from it; and requests that no offered function fits,
of the kinds of train/tool_requests.py, answered directly.

Every request is written from the wording of one of two disjoint sets (train/tool_requests.py):
the training set's, and the held-out set's. The held-out requests therefore use wording the
training set never uses, which is what the evaluation measures (right function, arguments equal
to the expected ones, no call where none fits)."""

import datetime
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nexttoken.apps.tools import Function
from nexttoken.train.tool_requests import (CALL_TEMPLATES, NO_FIT, NO_FIT_TURNS, REMOVED_ANSWER, UNOFFERED,
                                           UNOFFERED_ANSWER, Split)

Message = dict[str, Any]

NUMBER = {"type": "number"}
DATE = {"type": "string", "format": "date"}
UNITS = {"km": "kilometers", "mile": "miles", "kg": "kilograms", "pound": "pounds", "celsius": "degrees Celsius",
         "fahrenheit": "degrees Fahrenheit", "meter": "meters", "foot": "feet", "liter": "liters", "gallon": "gallons"}
OPERATIONS = ("add", "subtract", "multiply", "divide")


def schema(properties: dict) -> Mapping:
    return {"type": "object", "properties": properties, "required": list(properties)}


FUNCTIONS = (
    Function("calculator", "Do arithmetic on two numbers.",
             schema({"operation": {"type": "string", "enum": list(OPERATIONS)}, "a": NUMBER, "b": NUMBER})),
    Function("convert_units", "Convert a quantity from one unit to another.",
             schema({"value": NUMBER, "from_unit": {"type": "string", "enum": list(UNITS)},
                     "to_unit": {"type": "string", "enum": list(UNITS)}})),
    Function("date_difference", "The number of days from one date to another.",
             schema({"start": DATE, "end": DATE})),
    Function("get_weather", "The weather forecast for a city, today or tomorrow.",
             schema({"city": {"type": "string"}, "day": {"type": "string", "enum": ["today", "tomorrow"]}})),
    Function("web_search", "Search the web and return the top result.", schema({"query": {"type": "string"}})),
)
FUNCTION_NAMES = tuple(f.name for f in FUNCTIONS)

# --- what the functions return ---------------------------------------------------------------------

FACTORS = {("km", "mile"): 0.621371, ("kg", "pound"): 2.20462, ("meter", "foot"): 3.28084,
           ("liter", "gallon"): 0.264172}
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "foggy", "snowy")


def calculate(operation: str, a: float, b: float) -> float:
    return {"add": a + b, "subtract": a - b, "multiply": a * b, "divide": a / b}[operation]


def convert(value: float, from_unit: str, to_unit: str) -> float:
    if (from_unit, to_unit) == ("celsius", "fahrenheit"):
        return value * 9 / 5 + 32
    if (from_unit, to_unit) == ("fahrenheit", "celsius"):
        return (value - 32) * 5 / 9
    factor = FACTORS.get((from_unit, to_unit)) or 1 / FACTORS[(to_unit, from_unit)]
    return value * factor


def days_between(start: str, end: str) -> int:
    return (datetime.date.fromisoformat(end) - datetime.date.fromisoformat(start)).days


def weather(city: str, day: str) -> dict:
    """A made-up forecast, the same for the same city and day."""
    seed = sum(map(ord, city + day))
    return {"city": city, "day": day, "temperature_c": 5 + seed % 25, "conditions": CONDITIONS[seed % len(CONDITIONS)]}


def search(query: str) -> dict:
    return {"title": f"{query.capitalize()} - Encyclopedia", "snippet": f"An overview of {query}."}


def result_of(name: str, arguments: dict) -> Any:
    """What the function `name` returns for `arguments`, as the tool message carries it."""
    if name == "calculator":
        return {"result": round(calculate(**arguments), 4)}
    if name == "convert_units":
        return {"value": round(convert(**arguments), 2), "unit": arguments["to_unit"]}
    if name == "date_difference":
        return {"days": days_between(**arguments)}
    return weather(**arguments) if name == "get_weather" else search(**arguments)


# --- the requests ------------------------------------------------------------------------------------

CITIES = ("Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Denver", "Nairobi", "Madrid", "Seoul", "Toronto", "Lagos",
          "Sydney", "Berlin", "Mumbai", "Quito", "Dublin")
TOPICS = ("black holes", "the French Revolution", "solar panels", "the Great Barrier Reef", "quantum computing",
          "honey bees", "the Silk Road", "electric cars", "volcanoes", "the printing press", "coral reefs",
          "machine learning", "the Roman Empire", "jazz music", "photosynthesis", "the Olympic Games")
OPERATION_WORDS = {"add": "plus", "subtract": "minus", "multiply": "times", "divide": "divided by"}
NAMES = ("Anna", "Sam", "Priya", "Tom", "Lena", "Omar", "Mia", "Kenji")
ANTONYMS = (("hot", "Cold"), ("fast", "Slow"), ("happy", "Sad"), ("early", "Late"), ("loud", "Quiet"),
            ("strong", "Weak"))
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
TIMES = ("6 am", "6:30", "7 am", "half past seven", "noon", "9 pm")
GENRES, ROOMS = ("jazz", "rock", "classical", "pop"), ("kitchen", "bedroom", "living room", "hall")
ITEMS = ("milk", "eggs", "bread", "apples", "coffee")
# the share of requests that no offered function fits: in training, enough that "no call" is a
# habit rather than an exception; held out, half, so that false calls are counted on as many
# requests as right calls
NO_FIT_SHARE: dict[Split, float] = {"train": 0.5, "held_out": 0.5}
OFFER_ALL_SHARE = 0.5  # training requests offered all five functions; the others a random subset

REPLIES = {
    "calculator": "{a} {word} {b} is {result}.",
    "convert_units": "{value} {from_name} is about {converted} {to_name}.",
    "date_difference": "There are {days} days from {start} to {end}.",
    "get_weather": "In {city} {day} it will be {conditions}, around {temperature_c} °C.",
    "web_search": "Here is what I found: {title}. {snippet}",
}


@dataclass(frozen=True)
class ToolCase:
    """One request, the functions offered with it, and what should answer it: a call (`function`,
    `arguments`) or, when no offered function fits (`kind` one of NO_FIT_KINDS), a direct answer."""

    request: str
    template: str
    function: str | None = None
    arguments: Mapping[str, Any] | None = None
    answer: str = ""  # the direct answer, when no function fits
    kind: str = "call"
    offered: tuple[str, ...] = FUNCTION_NAMES


def offered_functions(case: ToolCase) -> tuple[Function, ...]:
    return tuple(f for f in FUNCTIONS if f.name in case.offered)


def number(rng: random.Random) -> int | float:
    return rng.randint(2, 999) if rng.random() < 0.8 else round(rng.uniform(1, 99), 1)


def iso_date(rng: random.Random) -> str:
    return (datetime.date(2020, 1, 1) + datetime.timedelta(days=rng.randint(0, 2500))).isoformat()


def arguments_for(kind: str, rng: random.Random) -> tuple[str, dict, dict]:
    """The function a template kind calls, its arguments, and how the template's slots read them."""
    if kind in OPERATIONS:
        a, b = number(rng), number(rng)
        return "calculator", {"operation": kind, "a": a, "b": b}, {"a": a, "b": b}
    if kind == "convert_units":
        from_unit, to_unit = rng.choice([*FACTORS, *((t, f) for f, t in FACTORS), ("celsius", "fahrenheit"),
                                         ("fahrenheit", "celsius")])
        value = number(rng)
        return kind, {"value": value, "from_unit": from_unit, "to_unit": to_unit}, \
            {"value": value, "from_unit": UNITS[from_unit], "to_unit": UNITS[to_unit]}
    if kind == "date_difference":
        start, end = sorted([iso_date(rng), iso_date(rng)])
        return kind, {"start": start, "end": end}, {"start": start, "end": end}
    if kind == "get_weather":
        arguments = {"city": rng.choice(CITIES), "day": rng.choice(["today", "tomorrow"])}
        return kind, arguments, arguments
    arguments = {"query": rng.choice(TOPICS)}
    return "web_search", arguments, arguments


def slot_values(rng: random.Random) -> dict[str, Any]:
    """Values for every slot of a request that no function fits, with the answers derived from them."""
    root, n, year = rng.randint(2, 12), rng.randint(2, 999), rng.randint(1990, 2030)
    day, month = rng.randrange(7), rng.randrange(12)
    word, antonym = rng.choice(ANTONYMS)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return {"name": rng.choice(NAMES), "city": rng.choice(CITIES), "query": rng.choice(TOPICS), "word": word,
            "antonym": antonym, "root": root, "square": root**2, "cube": root**3, "n": n,
            "parity": "even" if n % 2 == 0 else "odd", "weekday": WEEKDAYS[day],
            "next_weekday": WEEKDAYS[(day + 1) % 7], "month": MONTHS[month], "next_month": MONTHS[(month + 1) % 12],
            "year": year, "leap_answer": f"{'Yes' if leap else 'No'}, {year} is {'' if leap else 'not '}a leap year.",
            "time": rng.choice(TIMES), "genre": rng.choice(GENRES), "room": rng.choice(ROOMS),
            "item": rng.choice(ITEMS), "start": iso_date(rng), "day": rng.choice(["today", "tomorrow"]),
            "b": rng.randint(2, 60)}


def offer(split: Split, rng: random.Random, fitting: str | None) -> tuple[str, ...]:
    """The functions offered with a request: held out, all five; in training, all five or a random
    subset (with the fitting function, if any), so that the model learns to read the list."""
    if split == "held_out" or rng.random() < OFFER_ALL_SHARE:
        return FUNCTION_NAMES
    others = [name for name in FUNCTION_NAMES if name != fitting]
    chosen = set(rng.sample(others, rng.randint(0 if fitting else 1, len(others) - 1)))
    return tuple(name for name in FUNCTION_NAMES if name in chosen or name == fitting)


def call_case(split: Split, kind: str, rng: random.Random) -> ToolCase:
    template = rng.choice(CALL_TEMPLATES[split][kind])
    function, arguments, slots = arguments_for(kind, rng)
    return ToolCase(template.format(**slots), template, function, arguments, offered=offer(split, rng, function))


def removed_case(split: Split, kind: str, rng: random.Random) -> ToolCase:
    """A call's request with its function taken off the offered list, and the web search too (a
    search could stand in for any function); answered from what the function would have returned,
    or with what cannot be done where the answer needs the function."""
    call = call_case(split, kind, rng)
    left = [name for name in FUNCTION_NAMES if name not in (call.function, "web_search")]
    if split == "train":
        left = rng.sample(left, rng.randint(1, len(left)))
    offered = tuple(name for name in FUNCTION_NAMES if name in left)
    if call.function in REMOVED_ANSWER:
        answer = REMOVED_ANSWER[call.function].format(**call.arguments)
    else:
        answer = reply_for(call, result_of(call.function, dict(call.arguments)))
    return ToolCase(call.request, call.template, answer=answer, kind="removed", offered=offered)


def no_fit_case(split: Split, kind: str, call_kind: str, rng: random.Random) -> ToolCase:
    if kind == "removed":
        return removed_case(split, call_kind, rng)
    if kind == "unoffered":
        template, what = rng.choice(UNOFFERED[split])
        answer = UNOFFERED_ANSWER.format(what=what)
    else:
        template, answer = rng.choice(NO_FIT[split][kind])
    slots = slot_values(rng)
    return ToolCase(template.format(**slots), template, answer=answer.format(**slots), kind=kind,
                    offered=offer(split, rng, None))


def tool_cases(split: Split, n: int, seed: int = 0) -> list[ToolCase]:
    """`n` cases written from `split`'s wording: a share (NO_FIT_SHARE) of requests that no offered
    function fits, taking the kinds in the split's order (NO_FIT_TURNS), and calls spread evenly
    over the template kinds (the four operations count as kinds), the removed kind's calls too. A
    longer list begins with a shorter one."""
    rng = random.Random(f"{split}-{seed}")
    call_kinds, cases, turns = list(CALL_TEMPLATES[split]), [], NO_FIT_TURNS[split]
    n_calls = n_no_fit = n_removed = 0
    for _ in range(n):
        if rng.random() < NO_FIT_SHARE[split]:
            kind = turns[n_no_fit % len(turns)]
            cases.append(no_fit_case(split, kind, call_kinds[n_removed % len(call_kinds)], rng))
            n_no_fit, n_removed = n_no_fit + 1, n_removed + (kind == "removed")
        else:
            cases.append(call_case(split, call_kinds[n_calls % len(call_kinds)], rng))
            n_calls += 1
    return cases


def reply_for(case: ToolCase, result: Mapping) -> str:
    args = dict(case.arguments)
    if case.function == "calculator":
        return REPLIES["calculator"].format(word=OPERATION_WORDS[args["operation"]], **args, **result)
    if case.function == "convert_units":
        return REPLIES["convert_units"].format(value=args["value"], from_name=UNITS[args["from_unit"]],
                                               converted=result["value"], to_name=UNITS[args["to_unit"]])
    return REPLIES[case.function].format(**{**args, **result})


def conversation(case: ToolCase, call_id: str = "call_0") -> list[Message]:
    """The case as an OpenAI conversation: the request, then the call, the function's result and
    the reply; or the direct answer."""
    request = {"role": "user", "content": case.request}
    if case.function is None:
        return [request, {"role": "assistant", "content": case.answer}]
    result = result_of(case.function, dict(case.arguments))
    call = {"id": call_id, "type": "function",
            "function": {"name": case.function, "arguments": json.dumps(dict(case.arguments))}}
    return [request, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
            {"role": "assistant", "content": reply_for(case, result)}]

