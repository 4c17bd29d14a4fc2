"""Use adapted models: an OpenAI-compatible server and the pool of adapters behind it."""
