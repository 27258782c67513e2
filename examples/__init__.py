"""Runnable examples: shared stream types, a Starlette server, clients and the demo."""
