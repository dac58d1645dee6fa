"""A tool-use set for supervised fine-tuning, built from templates so that it needs no download:
five functions with typed parameters (a calculator, a unit converter, a date difference, a weather
lookup, a web search), requests for each in varied wording, the call the request asks for, the
function's result, and a reply that answers from it; and requests that no function fits, answered
directly.

Every request is written from a template of one of two disjoint sets: the training set's, and the
held-out set's. The held-out requests therefore use wording the training set never uses, which is
what the evaluation measures (right function, arguments equal to the expected ones, no call where
none fits)."""

import datetime
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from nexttoken.apps.tools import Function

Message = dict[str, Any]
Split = Literal["train", "held_out"]

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

# (function, template); the slots are filled by `arguments_for`
TEMPLATES: dict[Split, dict[str, tuple[str, ...]]] = {
    "train": {
        "add": ("What is {a} plus {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}.",
                "I had {a} stamps and got {b} more. How many do I have?"),
        "subtract": ("What is {a} minus {b}?", "Subtract {b} from {a}.", "How much is {a} take away {b}?"),
        "multiply": ("What is {a} times {b}?", "Multiply {a} by {b}.", "What's the product of {a} and {b}?"),
        "divide": ("What is {a} divided by {b}?", "Divide {a} by {b}.", "How many times does {b} go into {a}?"),
        "convert_units": ("Convert {value} {from_unit} to {to_unit}.", "How many {to_unit} is {value} {from_unit}?",
                          "What is {value} {from_unit} in {to_unit}?", "I need {value} {from_unit} expressed in "
                                                                         "{to_unit}."),
        "date_difference": ("How many days are there between {start} and {end}?", "Count the days from {start} to "
                                                                                  "{end}.",
                            "What's the number of days between {start} and {end}?",
                            "If today is {start}, how many days until {end}?"),
        "get_weather": ("What's the weather like in {city} {day}?", "Will it rain in {city} {day}?",
                        "Give me the forecast for {city} {day}.", "How warm is it in {city} {day}?"),
        "web_search": ("Search the web for {query}.", "Look up {query}.", "Find information about {query}.",
                       "Can you google {query}?"),
    },
    "held_out": {
        "add": ("Please total {a} and {b}.", "Calculate {a} + {b} for me."),
        "subtract": ("If I had {a} dollars and spent {b}, how much is left?",),
        "multiply": ("Work out {a} multiplied by {b}.", "Find {a} x {b}."),
        "divide": ("Share {a} equally among {b}: how much does each get?",),
        "convert_units": ("{value} {from_unit} equals how many {to_unit}?", "Could you turn {value} {from_unit} into "
                                                                            "{to_unit}?"),
        "date_difference": ("How long is it, in days, from {start} until {end}?",
                            "I start on {start} and finish on {end}; how many days is that?"),
        "get_weather": ("Should I bring an umbrella in {city} {day}?", "Tell me the conditions in {city} {day}."),
        "web_search": ("Do a web search on {query}.", "Find me articles about {query}."),
    },
}

# requests that no function fits, with a direct answer
DIRECT: dict[Split, tuple[tuple[str, str], ...]] = {
    "train": (
        ("Hello! How are you?", "Hello! I'm doing well, thank you. How can I help you today?"),
        ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide breathes "
                                         "and leaves."),
        ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
        ("Give me a synonym for happy.", "Joyful."),
        ("Suggest a name for my new puppy.", "How about Biscuit?"),
        ("Translate 'thank you' into Spanish.", "Gracias."),
        ("What is your name?", "I'm an AI assistant."),
        ("Thanks for your help!", "You're welcome! Glad I could help."),
        ("Write one sentence about autumn.", "Autumn paints the trees in red and gold before the first frost."),
        ("Give me a tip for better sleep.", "Keep a regular bedtime and put screens away an hour before sleep."),
        ("Rewrite this more politely: give me the report.", "Could you please send me the report?"),
        ("What rhymes with cat?", "Hat, bat, mat and sat."),
        ("Say something encouraging.", "You've got this: every step forward counts."),
        ("Spell the word 'necessary'.", "N-E-C-E-S-S-A-R-Y."),
        ("Name three primary colours.", "Red, blue and yellow."),
        ("Is a tomato a fruit or a vegetable?", "Botanically, a tomato is a fruit."),
    ),
    "held_out": (
        ("Good morning!", "Good morning! What can I do for you?"),
        ("Compose a limerick about a cat.", "A cat with a taste for the cream..."),
        ("What's the opposite of cold?", "Hot."),
        ("Recommend a hobby I can do indoors.", "Try painting."),
        ("Summarise the plot of Cinderella in one line.", "A mistreated girl wins the prince with a glass slipper."),
        ("Which is bigger, an elephant or a mouse?", "An elephant."),
        ("Tell me a riddle.", "What has keys but can't open locks? A piano."),
        ("Make this sentence shorter: I am going to go to the shop now.", "I'm going to the shop."),
        ("Write a two-line poem about rain.", "Soft rain on the roof,\na lullaby for the town."),
        ("How do you say goodbye in French?", "Au revoir."),
        ("Give me a word that starts with Z.", "Zebra."),
        ("What colour do you get mixing blue and yellow?", "Green."),
        ("Cheer me up, I had a long day.", "You made it through, and that counts. Rest well tonight."),
        ("Write a short thank-you note to a teacher.", "Thank you for your patience and for making every lesson count."),
    ),
}

REPLIES = {
    "calculator": "{a} {word} {b} is {result}.",
    "convert_units": "{value} {from_name} is about {converted} {to_name}.",
    "date_difference": "There are {days} days from {start} to {end}.",
    "get_weather": "In {city} {day} it will be {conditions}, around {temperature_c} °C.",
    "web_search": "Here is what I found: {title}. {snippet}",
}


@dataclass(frozen=True)
class ToolCase:
    """One request and what should answer it: a call (`function`, `arguments`) or none."""

    request: str
    template: str
    function: str | None = None
    arguments: Mapping[str, Any] | None = None
    answer: str = ""  # the direct answer, when no function fits


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


def tool_cases(split: Split, n: int, seed: int = 0) -> list[ToolCase]:
    """`n` cases written from `split`'s templates: a fifth (held out: three tenths, so that false
    calls are counted on enough of them) requests that no function fits, the rest spread evenly
    over the template kinds (the four operations count as kinds)."""
    rng, direct_share = random.Random(f"{split}-{seed}"), 0.2 if split == "train" else 0.3
    kinds, cases = list(TEMPLATES[split]), []
    for i in range(n):
        if rng.random() < direct_share:
            request, answer = rng.choice(DIRECT[split])
            cases.append(ToolCase(request, request, answer=answer))
            continue
        kind = kinds[i % len(kinds)]
        template = rng.choice(TEMPLATES[split][kind])
        function, arguments, slots = arguments_for(kind, rng)
        cases.append(ToolCase(template.format(**slots), template, function, arguments))
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

