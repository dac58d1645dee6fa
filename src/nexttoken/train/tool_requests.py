"""The wording of the tool-use set (train/tool_data.py): templates of requests that call a
function, and requests that no offered function fits, each in two disjoint sets, the training
set's and the held-out set's.

Requests that no function fits come in kinds, because each teaches the model a different edge of
"call only what fits":
- "chat": greetings, thanks, small talk;
- "task": writing, rewording and what the model knows itself (a poem, a synonym, a riddle);
- "near": questions on a function's topic that the function cannot answer (a square root for a
  calculator of four operations, what a barometer measures for a weather lookup);
- "unoffered": requests for a function that is not offered (an alarm, an email, a booking);
- "removed" (built in tool_data.py): a request that calls a function, with that function taken off
  the offered list.
Slots in braces are filled by tool_data.py's `slot_values`; the web search is meant for requests
that ask to search or look up, and questions the model can answer itself are answered directly."""

from typing import Literal

Split = Literal["train", "held_out"]

NO_FIT_KINDS = ("chat", "task", "near", "unoffered", "removed")
# the order in which each split takes the kinds: held out, each once; in training, "near" and
# "removed" twice, because telling a request from the one a function fits is the harder edge
NO_FIT_TURNS: dict[Split, tuple[str, ...]] = {"train": ("chat", "near", "removed", "task", "near", "unoffered",
                                                        "removed"),
                                              "held_out": NO_FIT_KINDS}

# (function kind, template); the slots are filled by tool_data.arguments_for
CALL_TEMPLATES: dict[Split, dict[str, tuple[str, ...]]] = {
    "train": {
        "add": ("What is {a} plus {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}.",
                "I had {a} stamps and got {b} more. How many do I have?"),
        "subtract": ("What is {a} minus {b}?", "Subtract {b} from {a}.", "How much is {a} take away {b}?"),
        "multiply": ("What is {a} times {b}?", "Multiply {a} by {b}.", "What's the product of {a} and {b}?"),
        "divide": ("What is {a} divided by {b}?", "Divide {a} by {b}.", "How many times does {b} go into {a}?"),
        "convert_units": ("Convert {value} {from_unit} to {to_unit}.", "How many {to_unit} is {value} {from_unit}?",
                          "What is {value} {from_unit} in {to_unit}?",
                          "I need {value} {from_unit} expressed in {to_unit}."),
        "date_difference": ("How many days are there between {start} and {end}?",
                            "Count the days from {start} to {end}.",
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
        "convert_units": ("{value} {from_unit} equals how many {to_unit}?",
                          "Could you turn {value} {from_unit} into {to_unit}?"),
        "date_difference": ("How long is it, in days, from {start} until {end}?",
                            "I start on {start} and finish on {end}; how many days is that?"),
        "get_weather": ("Should I bring an umbrella in {city} {day}?", "Tell me the conditions in {city} {day}."),
        "web_search": ("Do a web search on {query}.", "Find me articles about {query}."),
    },
}

# (request, answer) of the kinds "chat", "task" and "near"; "unoffered" answers say what cannot be done
NO_FIT: dict[Split, dict[str, tuple[tuple[str, str], ...]]] = {
    "train": {
        "chat": (
            ("Hello! How are you?", "Hello! I'm doing well, thank you. How can I help you today?"),
            ("What is your name?", "I'm an AI assistant."),
            ("Thanks for your help!", "You're welcome! Glad I could help."),
            ("Hi there!", "Hi! What can I do for you?"),
            ("Good night!", "Good night, sleep well!"),
            ("Who made you?", "I'm an AI assistant built by a team of engineers."),
            ("Nice to meet you, I'm {name}.", "Nice to meet you, {name}! How can I help?"),
            ("I'm bored.", "How about a short walk, a puzzle or a new song?"),
            ("How's your day going?", "Very well, thanks for asking! How about yours?"),
            ("You're great.", "Thank you, that's kind of you!"),
            ("Goodbye!", "Goodbye! Have a great day."),
            ("Say something encouraging.", "You've got this: every step forward counts."),
        ),
        "task": (
            ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide breathes "
                                             "and leaves."),
            ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
            ("Give me a synonym for happy.", "Joyful."),
            ("Suggest a name for my new puppy.", "How about Biscuit?"),
            ("Translate 'thank you' into Spanish.", "Gracias."),
            ("Write one sentence about autumn.", "Autumn paints the trees in red and gold before the first frost."),
            ("Give me a tip for better sleep.", "Keep a regular bedtime and put screens away an hour before sleep."),
            ("Rewrite this more politely: give me the report.", "Could you please send me the report?"),
            ("What rhymes with cat?", "Hat, bat, mat and sat."),
            ("Spell the word 'necessary'.", "N-E-C-E-S-S-A-R-Y."),
            ("Name three primary colours.", "Red, blue and yellow."),
            ("Is a tomato a fruit or a vegetable?", "Botanically, a tomato is a fruit."),
            ("Give me an antonym for {word}.", "{antonym}."),
            ("Suggest a title for an essay on {query}.", "A Closer Look at {query}."),
            ("Write a one-line poem about {city}.", "{city} at dusk: lights on the water, voices in the street."),
            ("Correct the grammar: she go to school every day.", "She goes to school every day."),
        ),
        "near": (
            ("What is the square root of {square}?", "{root}."),
            ("Is {n} an even number?", "{n} is an {parity} number."),
            ("How many days are in a leap year?", "366."),
            ("What day comes after {weekday}?", "{next_weekday}."),
            ("What does a barometer measure?", "Air pressure."),
            ("How many centimeters are in a meter?", "100."),
            ("Which is longer, a mile or a kilometer?", "A mile: it is about 1.6 kilometers."),
            ("What month comes after {month}?", "{next_month}."),
            ("Why is the sky blue?", "Sunlight scatters off the air, and blue light scatters the most."),
            ("Is {city} a city or a country?", "{city} is a city."),
            ("What does the word 'forecast' mean?", "A prediction of what will happen, such as tomorrow's weather."),
            ("Which is heavier, a kilogram or a pound?", "A kilogram: it is about 2.2 pounds."),
            ("What's the formula for the area of a circle?", "Pi times the radius squared."),
            ("Is {year} a leap year?", "{leap_answer}"),
        ),
    },
    "held_out": {
        "chat": (
            ("Good morning!", "Good morning! What can I do for you?"),
            ("Hey, what's up?", "Not much! What can I help you with?"),
            ("Thank you so much!", "My pleasure!"),
            ("Are you a robot?", "I'm an AI assistant, a program rather than a robot."),
            ("See you later!", "See you! Take care."),
            ("I feel a bit lonely today.", "I'm sorry to hear that. Would you like to talk for a while?"),
            ("Do you like music?", "I don't listen to music, but I enjoy talking about it."),
            ("Cheer me up, I had a long day.", "You made it through, and that counts. Rest well tonight."),
            ("My name is {name}. What's yours?", "Hello {name}, I'm an AI assistant."),
            ("How old are you?", "I don't have an age the way people do."),
        ),
        "task": (
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
            ("Write a short thank-you note to a teacher.", "Thank you for your patience and for making every lesson "
                                                           "count."),
            ("Describe {city} in three words.", "Lively, historic, welcoming."),
            ("Write a tweet about {query}.", "Just learned something new about {query}. Fascinating!"),
        ),
        "near": (
            ("How many hours are there in a day?", "24."),
            ("Which month has the fewest days?", "February."),
            ("What instrument measures temperature?", "A thermometer."),
            ("At what temperature does water freeze, in Celsius?", "0 °C."),
            ("Tell me whether {n} is odd or even.", "{n} is {parity}."),
            ("What is the cube root of {cube}?", "{root}."),
            ("Which day of the week comes before {next_weekday}?", "{weekday}."),
            ("What's the capital of Japan?", "Tokyo."),
            ("What causes rain?", "Water vapour cools into droplets, which fall once they are heavy enough."),
            ("What does 'km' stand for?", "Kilometer."),
            ("How many seconds are in a minute?", "60."),
            ("Define the word 'calendar'.", "A table of the days, weeks and months of a year."),
        ),
    },
}

# (request, what cannot be done): requests for a function that no one offers
UNOFFERED: dict[Split, tuple[tuple[str, str], ...]] = {
    "train": (
        ("Set an alarm for {time}.", "set alarms"),
        ("Send an email to {name} saying I'll be late.", "send emails"),
        ("Book a table for two in {city} tonight.", "book restaurants"),
        ("Play some {genre} music.", "play music"),
        ("Turn off the lights in the {room}.", "control the lights"),
        ("Remind me to call {name} on {start}.", "set reminders"),
        ("Order a pizza to my house.", "order food"),
        ("Call a taxi to the airport.", "call taxis"),
        ("Add {item} to my shopping list.", "edit your shopping list"),
        ("Text {name} happy birthday.", "send messages"),
        ("What's on my calendar {day}?", "read your calendar"),
    ),
    "held_out": (
        ("Wake me up at {time}.", "set alarms"),
        ("Message {name} that dinner is ready.", "send messages"),
        ("Reserve a hotel room in {city} for {day}.", "make reservations"),
        ("Put on a {genre} playlist.", "play music"),
        ("Dim the {room} lights.", "control the lights"),
        ("Schedule a meeting with {name} on {start}.", "manage your calendar"),
        ("Buy me a train ticket to {city}.", "buy tickets"),
        ("Pay my phone bill.", "make payments"),
        ("Check my inbox for new mail.", "read your email"),
        ("Start a timer for {b} minutes.", "set timers"),
    ),
}

UNOFFERED_ANSWER = "Sorry, I can't {what}: none of the functions I have does that."
# what a request whose function was taken off the list is answered, when the answer needs the function
REMOVED_ANSWER = {
    "get_weather": "I can't check the weather in {city} {day}: none of the functions I have gives a forecast.",
    "web_search": "I can't search the web for {query}: none of the functions I have does that.",
}
