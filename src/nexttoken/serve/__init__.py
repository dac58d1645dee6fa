"""An OpenAI-compatible HTTP server for a nexttoken model, in parts:

  app.py         create_app: the state, the FastAPI app, its middleware, error handlers and routes
  state.py       what the routes work with (model, names, encoder, engine), passed as a dependency
  routes.py      the endpoints
  protocol.py    the request bodies, validated
  output_form.py what a chat request asks of its reply's form (response_format, tools), as a grammar
  streaming.py   a request's events, answered whole or as server-sent events
  events.py      a request's sequences (samples, beams) as requests of the engine, and their events
  engine.py      continuous batching: requests join and leave the decoding engine between its steps
  shapes.py      our results in OpenAI's response objects
  replies.py     a chat choice's message and its streamed deltas, tool calls included
  errors.py      typed errors and the one table of their statuses, types and codes
  body_limit.py  a 413 before an oversized body is read
  static/        the chat page"""
