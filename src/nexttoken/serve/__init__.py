"""An OpenAI-compatible HTTP server for a nexttoken model."""
