"""The encoder family: BERT-style models for sentence embeddings, semantic search, classification and NER."""
