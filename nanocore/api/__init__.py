"""The signed REST API of Nano Core 1.4, as a Klein app over injected operations."""
