"""A tool-using agent with the `openai` client against `nexttoken serve`: the model calls a Python
function, gets its result back as a `tool` message, and answers from it.

    nexttoken finetune tools --out runs/tools-model      # SmolLM2 taught to call functions
    nexttoken serve --model runs/tools-model &
    python examples/tool_agent.py "How many days are there from 2024-01-15 to 2024-03-01?"

Any model works; the fine-tuned one calls the right function far more often (docs/training.md)."""

import argparse
import datetime
import json

import openai

TOOLS = [{"type": "function", "function": {
    "name": "date_difference", "description": "The number of days from one date to another.",
    "parameters": {"type": "object", "properties": {"start": {"type": "string", "format": "date"},
                                                    "end": {"type": "string", "format": "date"}},
                   "required": ["start", "end"]}}}]


def date_difference(start: str, end: str) -> dict:
    return {"days": (datetime.date.fromisoformat(end) - datetime.date.fromisoformat(start)).days}


FUNCTIONS = {"date_difference": date_difference}


def run(client: openai.OpenAI, model: str, question: str, max_turns: int = 4) -> str:
    """Ask, make the calls the model asks for, hand back their results, until it answers."""
    messages = [{"role": "user", "content": question}]
    for _ in range(max_turns):
        message = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0,
                                                 max_tokens=128).choices[0].message
        if not message.tool_calls:
            return message.content
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            result = FUNCTIONS[call.function.name](**json.loads(call.function.arguments))
            print(f"called {call.function.name}({call.function.arguments}) -> {result}")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    return "(no answer after the calls)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="How many days are there from 2024-01-15 to 2024-03-01?")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="unused")
    model = client.models.list().data[0].id
    print(run(client, model, args.question))


if __name__ == "__main__":
    main()
