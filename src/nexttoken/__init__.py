"""nexttoken: a large language model you can run, read, inspect and train on an ordinary machine."""
