"""An OpenAI-compatible HTTP server for a nexttoken model, in parts:

  app.py         create_app: the state, the FastAPI app, its middleware, error handlers and routes
  state.py       what the routes work with (model, names, encoder, engine), passed as a dependency
  routes.py      the endpoints
  protocol.py    the request bodies, validated
  streaming.py   a request's events, answered whole or as server-sent events
  events.py      sampled sequences as rows of the continuous-batching engine
  engine.py      the continuous-batching engine
  beam.py        beam search as a batch of its own, until the engine runs it
  shapes.py      our results in OpenAI's response objects
  errors.py      typed errors and the one table of their statuses, types and codes
  body_limit.py  a 413 before an oversized body is read
  static/        the chat page"""
